"""The record of a session's recently applied turns: pure, no I/O (docs/client.md,
"Exactly-once turns").

A client gives every call a turn id (``x-shardroute-turn-id``, the same on every attempt
of the call). A shard that saves a turn's new state saves, in the same checkpoint, the
turn's id and its reply bytes (up to :attr:`TurnMemory.max_reply_bytes`; a larger reply
is recorded as "applied" without it). The record is part of the stored state, so it
moves with a migration and survives a SIGKILL exactly when the state does: a turn whose
outcome was unknown, retried on any shard, is answered from the record instead of being
applied twice, as long as it is among the last :attr:`TurnMemory.max_turns` turns of the
session.

On the wire of the stores (:mod:`shardroute.sessions.envelope`) a snapshot carries the
whole record and a turn record only the turns it adds; a state read back is the
snapshot's record followed by each turn record's, trimmed by :meth:`TurnMemory.keep`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shardroute import metadata
from shardroute.errors import ConfigError, InvalidTurnId, MalformedRecord

__all__ = [
    "MAX_TURN_ID_BYTES",
    "Applied",
    "AppliedTurn",
    "TurnMemory",
    "added",
    "check_turn_id",
    "find",
    "pack_turns",
    "replay_trailers",
    "unpack_turns",
]

MAX_TURN_ID_BYTES = 64
"""The longest turn id a shard accepts."""

_TURN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def check_turn_id(value: str) -> str:
    """``value`` if it is a valid turn id (1 to 64 characters of ``A-Z a-z 0-9 . _ : -``),
    else :class:`~shardroute.errors.InvalidTurnId`."""
    if not isinstance(value, str) or _TURN_ID.fullmatch(value) is None:
        raise InvalidTurnId(
            f"invalid turn id {value!r:.80}: a turn id is 1 to {MAX_TURN_ID_BYTES} characters "
            "of A-Z a-z 0-9 . _ : - (shardroute clients make valid ones; nothing was executed)"
        )
    return value


@dataclass(frozen=True, slots=True)
class AppliedTurn:
    """One applied turn: its id and its reply's bytes (None: applied, but the reply was
    not kept: larger than the cap, or not a single message)."""

    turn_id: str
    reply: bytes | None = None


Applied = tuple[AppliedTurn, ...]
"""A session's record of applied turns, oldest first."""


@dataclass(frozen=True, slots=True)
class TurnMemory:
    """How much of a session's applied turns a shard remembers (and stores with the state).

    Attributes:
        max_turns: the last this many turns of a session are remembered (0: none; turn
            ids are then ignored and an outcome-unknown retry may apply a turn twice).
        max_reply_bytes: a reply up to this size is kept and sent again to a retry; a
            larger one is recorded as applied without it (the retry then gets
            :class:`~shardroute.errors.TurnAlreadyApplied`). The reply goes back in a
            trailer, so keep it under gRPC's metadata limit (8 KiB by default).
        max_bytes: the kept replies of one session together stay under this; older
            replies are dropped first (their ids stay, as "applied").
    """

    max_turns: int = 16
    max_reply_bytes: int = 4096
    max_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_reply_bytes", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"TurnMemory.{name} must be an int >= 0, got {value!r}")

    def remember(self, applied: Applied, turn: AppliedTurn) -> Applied:
        """``applied`` with ``turn`` added last (its reply dropped when over the cap),
        then trimmed by :meth:`keep`."""
        if turn.reply is not None and len(turn.reply) > self.max_reply_bytes:
            turn = AppliedTurn(turn.turn_id, None)
        return self.keep((*applied, turn))

    def keep(self, applied: Applied) -> Applied:
        """The newest :attr:`max_turns` turns of ``applied``, their kept replies within
        :attr:`max_bytes` (older replies dropped first)."""
        if not self.max_turns:
            return ()
        newest = applied[-self.max_turns :]
        budget = self.max_bytes
        kept: list[AppliedTurn] = []
        for turn in reversed(newest):
            reply = turn.reply
            if reply is not None and len(reply) > budget:
                turn = AppliedTurn(turn.turn_id, None)
            elif reply is not None:
                budget -= len(reply)
            kept.append(turn)
        kept.reverse()
        return tuple(kept)


def find(applied: Applied | None, turn_id: str) -> AppliedTurn | None:
    """The applied turn with ``turn_id`` (None: not in the record)."""
    for turn in reversed(applied or ()):
        if turn.turn_id == turn_id:
            return turn
    return None


def added(previous: Applied, applied: Applied) -> Applied:
    """The turns of ``applied`` that ``previous`` does not have (what a turn record
    stores)."""
    if not applied:
        return ()
    known = {turn.turn_id for turn in previous}
    return tuple(turn for turn in applied if turn.turn_id not in known)


# -- in an envelope -------------------------------------------------------------------------


def pack_turns(applied: Sequence[AppliedTurn]) -> tuple[dict[str, Any], bytes]:
    """The envelope header fields and the bytes after the state that carry ``applied``:
    ``"turns"``: ``[[turn_id, reply length or -1], ...]``, ``"turns_crc32"``: CRC-32 of
    the replies (absent when there are none), which follow the state's bytes in order."""
    replies = b"".join(turn.reply for turn in applied if turn.reply is not None)
    fields: dict[str, Any] = {
        "turns": [[t.turn_id, -1 if t.reply is None else len(t.reply)] for t in applied]
    }
    if replies:  # absent: no replies (the CRC-32 of nothing, 0)
        fields["turns_crc32"] = zlib.crc32(replies)
    return fields, replies


def unpack_turns(key: str, header: dict[str, Any], tail: bytes) -> Applied:
    """The applied turns an envelope's header and its bytes after the state describe
    (:class:`~shardroute.errors.MalformedRecord` naming ``key`` on any mismatch)."""
    turns, crc = header.get("turns"), header.get("turns_crc32", 0)
    if not isinstance(turns, list) or isinstance(crc, bool) or not isinstance(crc, int):
        raise MalformedRecord(key, "envelope 'turns' must be a list with an int 'turns_crc32'")
    applied: list[AppliedTurn] = []
    offset = 0
    for item in turns:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or _TURN_ID.fullmatch(item[0]) is None
            or isinstance(item[1], bool)
            or not isinstance(item[1], int)
            or item[1] < -1
        ):
            raise MalformedRecord(key, f"malformed applied turn {item!r:.100}")
        turn_id, size = item
        if size < 0:
            applied.append(AppliedTurn(turn_id))
            continue
        applied.append(AppliedTurn(turn_id, bytes(tail[offset : offset + size])))
        offset += size
    if offset != len(tail):
        raise MalformedRecord(
            key, f"applied turns' replies are {len(tail)} bytes, the header says {offset}"
        )
    if zlib.crc32(tail) != crc:
        raise MalformedRecord(key, "CRC-32 mismatch in the applied turns' replies")
    return tuple(applied)


def replay_trailers(turn: AppliedTurn) -> tuple[tuple[str, str | bytes], ...]:
    """The trailers of a call answered from the record of applied turns."""
    applied: tuple[tuple[str, str | bytes], ...] = ((metadata.TURN_APPLIED, "1"),)
    if turn.reply is None:
        return applied
    return (*applied, (metadata.TURN_REPLY, b"\x00" + turn.reply))
