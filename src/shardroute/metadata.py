"""gRPC metadata keys shardroute puts on calls (request) and on responses (trailing).

Both sides import these names; docs/protocol.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardroute.session_keys import decode_session_key

__all__ = [
    "LOAD",
    "NOT_EXECUTED",
    "PRIORITY",
    "REASON",
    "REDIRECT",
    "SESSION_KEY",
    "SHARD_ID",
    "TURN_APPLIED",
    "TURN_ID",
    "TURN_REPLY",
    "format_load",
    "get",
    "get_session_key",
    "parse_load",
]

SESSION_KEY = "x-shardroute-session"
"""Request: the session key the call belongs to, in its wire form (printable ASCII:
:mod:`shardroute.session_keys`; read it with :func:`get_session_key`)."""
PRIORITY = "x-shardroute-priority"
"""Request: the priority class of the call. Absent for ``standard``."""
REASON = "x-shardroute-reason"
"""Request: why the router chose this shard (memo, spill, zone_fallback, failover).
Absent in the common case, affinity (the session's home)."""
SHARD_ID = "x-shardroute-shard"
"""Request, with ``REASON``: the shard id the client meant to reach."""
LOAD = "x-shardroute-load"
"""Trailing: the shard's load when it answered, ``inflight=3,queue=0,capacity=64``."""
REDIRECT = "x-shardroute-redirect"
"""Trailing: the shard that owns the session now (session migration)."""
NOT_EXECUTED = "x-shardroute-not-executed"
"""Trailing, ``1``: the shard refused the call before running any of it (the session is
busy or moving, the store or etcd unreachable, no topology yet): safe to send again."""

TURN_ID = "x-shardroute-turn-id"
"""Request: the call's turn id, the same on every attempt of one call (sent when the
client's ``RetryPolicy(exactly_once=True)``): a shard that applied it recently answers
from its record instead of running it again (docs/client.md, "Exactly-once turns")."""
TURN_APPLIED = "x-shardroute-turn-applied"
"""Trailing, ``1``, with ``ALREADY_EXISTS``: the call's turn id was applied already; the
call was answered from the record, not run."""
TURN_REPLY = "x-shardroute-turn-reply-bin"
"""Trailing, binary, with ``TURN_APPLIED``: ``b"\x00"`` + the recorded reply's bytes
(absent when the reply was not kept)."""


def get(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The first value of ``key`` in gRPC metadata, or None."""
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


def get_session_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The session key of a call (the ``SESSION_KEY`` header, decoded), or None when
    there is none. Raises :class:`~shardroute.errors.InvalidSessionKey` for a malformed
    header."""
    wire = get(metadata, SESSION_KEY)
    return None if wire is None else decode_session_key(wire)


def format_load(inflight: int, queue: int, capacity: int) -> str:
    """Encode a load for the ``LOAD`` trailer."""
    return f"inflight={inflight},queue={queue},capacity={capacity}"


def parse_load(text: str) -> dict[str, int]:
    """Decode a ``LOAD`` trailer; unknown or malformed parts are ignored."""
    result: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if value.strip().isdigit():
            result[name.strip()] = int(value)
    return result
