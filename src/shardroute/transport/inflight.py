"""This client's calls in flight, per shard: the transport counts, the router reads.

Lock-free on the call path. Under CPython's GIL each update is one statement with
no call and no backward jump in it (a dict read, an add, a dict store), and the
interpreter only switches threads at calls, backward jumps and function entries, so
no update can be lost (``tests/unit/test_transport_inflight.py`` hammers it from 8
threads with a 1 µs switch interval). On an interpreter without the GIL the same
updates run under a lock.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

__all__ = ["LOCK_FREE", "InFlight"]

_GIL = bool(getattr(sys, "_is_gil_enabled", lambda: True)())
LOCK_FREE = _GIL
"""Whether :meth:`InFlight.begin` and :meth:`InFlight.end` take no lock (under the GIL).
The client's flat unary path (``transport._async_calls``) then makes the same updates
inline for one call; without the GIL it calls these methods (locked) instead."""
_EMPTY: Mapping[str, int] = MappingProxyType({})


class InFlight:
    """Calls in flight per shard id, and their excess over the reported loads.

    The router reads it as its ``loads`` input (:class:`~shardroute.routing.OwnLoads`):
    a shard's load is max(reported, :attr:`counts`), and the total load is the table's
    reported total plus :attr:`excess`, which :meth:`begin`/:meth:`end` keep up to date
    relative to :attr:`basis`. Call :meth:`rebase` with ``Router.basis(topology)`` on
    each new snapshot routed on (one thread at a time: the client's ``LoadBoard`` does,
    under its lock, from the thread that makes the snapshot). Between a rebase and the
    end of the calls it overlaps, a concurrent call may be counted against the old or
    the new reports; the next rebase recomputes the excess exactly.

    Thread-safe; :meth:`begin` and :meth:`end` take no lock (under the GIL).
    """

    __slots__ = ("_counts", "_lock", "_thresholds", "basis", "counts", "excess")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self.counts: Mapping[str, int] = self._counts
        """Calls in flight by shard id (read-only, live)."""
        self._thresholds: Mapping[str, int] = _EMPTY  # shard id -> reported load
        self._lock = threading.RLock()  # creating a shard's entry; rebase; no-GIL builds
        self.basis: Mapping[str, int] | None = None
        """The reported loads :attr:`excess` is relative to (None before a rebase)."""
        self.excess = 0
        """Sum over :attr:`basis`'s shards of max(0, in flight - reported)."""

    def count(self, shard_id: str) -> int:
        """Calls in flight to ``shard_id``."""
        return self._counts.get(shard_id, 0)

    def begin(self, shard_id: str, n: int = 1) -> None:
        """Count ``n`` calls to ``shard_id`` as in flight (call :meth:`end` when done)."""
        counts = self._counts
        try:
            counts[shard_id] = c = counts[shard_id] + n  # one atomic statement
        except KeyError:
            with self._lock:
                counts.setdefault(shard_id, 0)
            counts[shard_id] = c = counts[shard_id] + n
        t = self._thresholds.get(shard_id)
        if t is not None and c > t:
            self.excess += n if c - n >= t else c - t

    def end(self, shard_id: str, n: int = 1) -> None:
        """Count ``n`` calls to ``shard_id`` as finished. Never goes below zero."""
        counts = self._counts
        try:
            # one atomic statement: x is the count before, c after (clamped at zero)
            counts[shard_id] = c = (x - n) if (x := counts[shard_id]) > n else 0
        except KeyError:
            return
        t = self._thresholds.get(shard_id)
        if t is not None and x > t:
            self.excess -= x - (c if c > t else t)

    @contextmanager
    def inflight(self, shard_id: str) -> Iterator[None]:
        """``with inflight.inflight(shard_id): call()``: begin, then end even on error."""
        self.begin(shard_id)
        try:
            yield
        finally:
            self.end(shard_id)

    def rebase(self, basis: Mapping[str, int]) -> None:
        """Adopt new reported loads (``Router.basis(topology)``: shard id → reported
        load, for the shards that take sessions) and recompute :attr:`excess`."""
        with self._lock:
            self._thresholds = basis
            counts = self._counts
            for shard_id in [k for k, v in counts.items() if not v and k not in basis]:
                del counts[shard_id]  # a shard that left, with nothing in flight
            self.excess = sum(
                n - basis[k] for k, n in list(counts.items()) if k in basis and n > basis[k]
            )
            self.basis = basis


if not _GIL:  # pragma: no cover - free-threaded interpreters: the same updates, locked
    _begin, _end = InFlight.begin, InFlight.end

    def _locked_begin(self: InFlight, shard_id: str, n: int = 1) -> None:
        with self._lock:
            _begin(self, shard_id, n)

    def _locked_end(self: InFlight, shard_id: str, n: int = 1) -> None:
        with self._lock:
            _end(self, shard_id, n)

    InFlight.begin = _locked_begin  # type: ignore[method-assign]
    InFlight.end = _locked_end  # type: ignore[method-assign]
