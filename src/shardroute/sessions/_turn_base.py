"""What :class:`~shardroute.sessions.Turn` and :class:`~shardroute.sessions.AsyncTurn`
share (hand-written; the two turns are one async source and its generated twin)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from shardroute import metadata
from shardroute.errors import InvalidSessionKey, InvalidTurnId
from shardroute.session_keys import check_session_key
from shardroute.sessions.applied import check_turn_id

if TYPE_CHECKING:
    from shardroute.sessions._host_base import _Entry
    from shardroute.sessions.host import SessionHost

__all__ = [
    "NO_KEY",
    "TurnBase",
    "call_deadline",
    "call_key",
    "call_reason",
    "call_turn_id",
    "reply_bytes",
]

S = TypeVar("S")

NO_KEY = "no session key: pass session_key=, or call through a shardroute client"


def call_reason(context: Any) -> str | None:
    """Why the client sent the call here (``x-shardroute-reason``), or None."""
    return metadata.get(context.invocation_metadata(), metadata.REASON)


def call_deadline(context: Any) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant (None: the call has none,
    or the context cannot tell)."""
    time_remaining = getattr(context, "time_remaining", None)
    remaining = time_remaining() if callable(time_remaining) else None
    return None if remaining is None else time.monotonic() + remaining


def call_key(context: Any, session_key: str | None) -> str:
    """``session_key``, else the call's ``x-shardroute-session`` decoded ("" when
    neither). Raises :class:`~shardroute.errors.InvalidSessionKey` for an invalid key or
    a malformed header."""
    if session_key:
        return check_session_key(session_key)
    return metadata.get_session_key(context.invocation_metadata()) or ""


def call_turn_id(context: Any) -> tuple[str | None, bool]:
    """The call's turn id (``x-shardroute-turn-id``; None: none) and whether the call
    streams its replies (``;stream`` after the id). Raises
    :class:`~shardroute.errors.InvalidTurnId` for a malformed value."""
    value = metadata.get(context.invocation_metadata(), metadata.TURN_ID)
    if value is None:
        return None, False
    turn_id, _, param = value.partition(";")
    if param not in ("", "stream"):
        raise InvalidTurnId(f"invalid turn id parameter {param!r:.40}: only 'stream' is known")
    return check_turn_id(turn_id), bool(param)


def reply_bytes(reply: Any) -> bytes | None:
    """What the record keeps of a reply: a protobuf message's serialized bytes, bytes
    as they are; None for anything else (recorded as applied, without the reply)."""
    if isinstance(reply, bytes):
        return reply
    serialize = getattr(reply, "SerializeToString", None)
    return bytes(serialize()) if callable(serialize) else None


class TurnBase(Generic[S]):
    """What both turn flavours share: the call's session key, the entry, its state."""

    def __init__(self, host: SessionHost, context: Any, session_key: str | None) -> None:
        self._host = host
        self._context = context
        self.key_problem = NO_KEY
        """Why the call has no valid key (what ``INVALID_ARGUMENT`` says)."""
        try:
            self.key = call_key(context, session_key)
        except InvalidSessionKey as exc:
            self.key, self.key_problem = "", str(exc)
        self.streams = False
        """Whether the call streams its replies (then no reply is kept with its turn id)."""
        try:
            self.turn_id, self.streams = call_turn_id(context)
            """The call's turn id (None: the client sent none)."""
        except InvalidTurnId as exc:
            self.key, self.key_problem, self.turn_id = "", str(exc), None
        self._entry: _Entry | None = None
        self.checkpointed = False

    @property
    def state(self) -> S:
        """The session's state at the start of this turn (treat it as read-only: a new
        state is saved with ``checkpoint``)."""
        if self._entry is None:
            raise RuntimeError("a turn's state is only available inside its 'with' block")
        state: S = self._entry.state
        return state

    @property
    def version(self) -> int:
        """The store version of :attr:`state` (0: never saved)."""
        return 0 if self._entry is None else self._entry.version
