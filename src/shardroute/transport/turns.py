"""Turn ids on the client side (docs/client.md, "Exactly-once turns"): making them, and
reading a shard's answer "this turn was applied already" (pure, no I/O).

A client with ``RetryPolicy(exactly_once=True)`` sends a turn id with every call, the
same on every attempt of that call; a call whose outcome is unknown (the shard died
mid-call) is then sent again under it, and a shard whose session applied it answers
from its record: ``ALREADY_EXISTS`` with ``x-shardroute-turn-applied: 1`` and, when the
reply was kept, ``x-shardroute-turn-reply-bin``. The call loops turn that answer into
the call's reply (:func:`recorded_reply`).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

import grpc

from shardroute import metadata
from shardroute.errors import TurnAlreadyApplied
from shardroute.transport.methods import MethodSpec

__all__ = ["STREAM", "is_replay", "recorded_reply", "turn_id_of", "turn_ids"]

STREAM = ";stream"
"""What a streaming call's ``x-shardroute-turn-id`` value ends with (docs/protocol.md)."""


def turn_ids() -> tuple[Callable[[], str], Callable[[], str]]:
    """The makers of this client's turn ids, for unary and for streaming calls, sharing
    one counter: a random prefix (72 bits, per client) and the count,
    ``"<prefix>.0x<hex count>"``, unique without a syscall or a uuid per call (30 times
    cheaper than ``str(uuid4())``, docs/benchmarks.md); a streaming call's header adds
    ``;stream`` (the shard then keeps no reply: a stream is never answered again).
    Thread-safe (``next`` on an ``itertools.count`` is one step under the GIL)."""
    prefix, count = secrets.token_urlsafe(9) + ".", itertools.count(1)

    def unary() -> str:
        return prefix + hex(next(count))

    def stream() -> str:
        return prefix + hex(next(count)) + STREAM

    return unary, stream


def turn_id_of(md: tuple[tuple[str, str], ...]) -> str | None:
    """The turn id of a call's first-attempt metadata (it goes last), or None."""
    if md and md[-1][0] == metadata.TURN_ID:
        return md[-1][1]
    return None


def _trailers(error: grpc.RpcError) -> Any:
    trailing = getattr(error, "trailing_metadata", None)
    try:
        return trailing() if callable(trailing) else None
    except Exception:  # an error without trailers
        return None


def is_replay(error: grpc.RpcError) -> bool:
    """Whether ``error`` is a shard's answer that the call's turn was applied already."""
    code = getattr(error, "code", None)
    if not callable(code) or code() is not grpc.StatusCode.ALREADY_EXISTS:
        return False
    return metadata.get(_trailers(error), metadata.TURN_APPLIED) == "1"


def recorded_reply(spec: MethodSpec, error: grpc.RpcError, shard_id: str, turn_id: str) -> Any:
    """The reply a shard answered from its record (``error`` is a replay,
    :func:`is_replay`), decoded like a response of ``spec``. Raises
    :class:`~shardroute.errors.TurnAlreadyApplied` when the reply was not kept, or for a
    streaming method (its replies cannot be sent again)."""
    turn_id = turn_id.partition(";")[0]
    raw: bytes | None = None
    for name, value in _trailers(error) or ():
        if name == metadata.TURN_REPLY and isinstance(value, bytes) and value[:1] == b"\x00":
            raw = value[1:]
    if raw is None or spec.kind != "unary_unary":
        raise TurnAlreadyApplied(
            f"{spec.path}: turn {turn_id} was applied already, exactly once, by the session "
            f"(answered by shard {shard_id!r}), but its reply was not kept (too large, or a "
            "stream); read the session's state instead of sending it again",
            shard_id,
            turn_id,
        ) from error
    decode = spec.response_deserializer
    return decode(raw) if decode is not None else raw
