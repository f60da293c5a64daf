"""Retrying a checkpoint the session store could not take (etcd restarting, Redis
failing over), on the shard, within the call's deadline.

A streaming turn has usually sent its messages when its final checkpoint runs, so the
client cannot retry it: a short store outage would fail the turn. The shard retries the
write instead, with backoff, while the compare-and-swap can be safely repeated. A write
that failed with the store unreachable may have been applied (its reply was lost), so
before each new attempt the stored state is read back (:func:`save_retrying`):

- the stored version is still the one the turn started from: nothing was written, send
  the write again (its compare decides, as it would have the first time);
- the stored state is the turn's own write (this shard, same bytes, the turn id in the
  record of applied turns): it was applied, answer as the write would have;
- anything else: another writer got there first (:class:`~shardroute.errors.StaleState`,
  as for a lost compare-and-swap).

A repeated write that loses its compare reads back once more (the first attempt may
have landed meanwhile). The retries stop at ``until`` (the smaller of the host's
``checkpoint_retry_s`` and the RPC's deadline less :data:`CHECKPOINT_MARGIN_S`); then the
last error is raised and the turn fails as before (``UNAVAILABLE``, not saved).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from shardroute.errors import EtcdNoSpace, StaleState
from shardroute.sessions.store import STORE_UNAVAILABLE

__all__ = ["CHECKPOINT_MARGIN_S", "retry_deadline", "save_retrying"]

T = TypeVar("T")

CHECKPOINT_MARGIN_S = 0.25
"""The retries of a checkpoint stop this long before the RPC's deadline, so the turn's
answer (its last message, or the error) still reaches the client in time."""

_BACKOFF_S = (0.05, 0.5)
"""The first pause between attempts and the longest (doubled after each attempt)."""


def retry_deadline(started: float, cap_s: float, rpc_deadline: float | None) -> float:
    """The ``time.monotonic()`` instant the retries of a checkpoint begun at ``started``
    stop: ``cap_s`` later, or :data:`CHECKPOINT_MARGIN_S` before the RPC's deadline."""
    until = started + cap_s
    if rpc_deadline is not None:
        until = min(until, rpc_deadline - CHECKPOINT_MARGIN_S)
    return until


def save_retrying(
    write: Callable[[], T],
    landed: Callable[[], T | None],
    until: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``write()``, retried while the store is unreachable, until ``until``.

    ``landed()`` reads the stored state back after a failed attempt: the write's result
    when it was applied, None when nothing was written; it raises
    :class:`~shardroute.errors.StaleState` when another writer got there first. An
    out-of-space etcd (:class:`~shardroute.errors.EtcdNoSpace`) is no short outage: it
    is raised at once, like every error but the store being unreachable.
    """
    try:
        return write()
    except STORE_UNAVAILABLE as exc:
        if isinstance(exc, EtcdNoSpace):
            raise
        last: BaseException = exc
    delay = _BACKOFF_S[0]
    while (left := until - time.monotonic()) > 0:
        sleep(min(delay, left))
        delay = min(delay * 2, _BACKOFF_S[1])
        try:
            # The last attempt's outcome is unknown: read before writing again.
            found = landed()
            if found is not None:
                return found
            try:
                return write()
            except StaleState:
                found = landed()  # the earlier attempt may have landed in between
                if found is not None:
                    return found
                raise
        except STORE_UNAVAILABLE as exc:
            if isinstance(exc, EtcdNoSpace):
                raise
            last = exc
    raise last
