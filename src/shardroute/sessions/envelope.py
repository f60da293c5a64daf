"""The bytes a session store writes: the state envelope, turn records and their folding.

Pure functions, shared by every :class:`~shardroute.sessions.SessionStore` implementation
(docs/migration.md, "Keys"; docs/etcd-schema.md):

- a **snapshot** is the whole state in an envelope: ``b"SRS1"`` + 4-byte big-endian
  header length + JSON header ``{"owner", "size", "crc32", "ts"}`` + the state bytes;
- a **turn record** is what one turn changed, in the same envelope, its header adding
  ``"keep"`` (how many leading bytes of the previous state the new state shares) and
  ``"state_size"`` / ``"state_crc32"`` (the size and CRC-32 of the whole state once the
  record is applied), so a reader checks every step and the result;
- either may carry **applied turns** (:mod:`shardroute.sessions.applied`): header
  ``"turns"`` ``[[turn_id, reply length or -1], ...]`` and ``"turns_crc32"``, the
  replies' bytes following the state's (``"size"`` and ``"crc32"`` still cover the state
  alone). A snapshot carries the whole record, a turn record the turns it adds; an
  envelope without ``"turns"`` (every envelope before turn ids) has an empty record.

A state's bytes are the snapshot's, then for each record in order: the first ``keep``
bytes, followed by the record's data. The delta is taken on the encoded bytes (their
longest common prefix), so any codec whose encoding of a grown state extends the old
encoding (JSON lists of turns, append-only logs) checkpoints in proportion to the turn,
and any other codec still works: its records are simply larger, and the fold policy
writes a snapshot instead when a record would not save anything.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, cast

from shardroute.errors import ConfigError, MalformedRecord
from shardroute.sessions.applied import Applied, pack_turns, unpack_turns

__all__ = [
    "ENVELOPE_MAGIC",
    "UNKNOWN_LOG",
    "FoldPolicy",
    "LogPosition",
    "StoredState",
    "TurnRecord",
    "apply_record",
    "common_prefix",
    "decode_envelope",
    "decode_record",
    "encode_envelope",
    "encode_record",
    "record_keep",
]

ENVELOPE_MAGIC = b"SRS1"
"""First bytes of every stored snapshot and turn record: format version 1 of the envelope."""

_HEADER_LEN = struct.Struct(">I")
_PREFIX_LEN = len(ENVELOPE_MAGIC) + _HEADER_LEN.size
_MAX_HEADER_BYTES = 64 * 1024  # a real header is ~80 bytes; anything bigger is corrupt


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where a stored session's turn log stands (what a store needs to append to it).

    ``turns`` and ``log_bytes``: the turn records written since the last snapshot and
    their data bytes; ``snapshot_bytes``: the size of that snapshot; ``record``: the
    store's id of the newest record (0: the snapshot is the newest); ``lease``: the etcd
    lease that expires the session (0: none).
    """

    turns: int = 0
    log_bytes: int = 0
    snapshot_bytes: int = 0
    record: int = 0
    lease: int = 0

    def appended(self, record_bytes: int, record: int) -> LogPosition:
        """The position after one more turn record of ``record_bytes`` data bytes, stored
        under id ``record``."""
        return LogPosition(
            turns=self.turns + 1,
            log_bytes=self.log_bytes + record_bytes,
            snapshot_bytes=self.snapshot_bytes,
            record=record,
            lease=self.lease,
        )


UNKNOWN_LOG = LogPosition(record=-1)
"""The position of a state whose log the writer does not know (e.g. it arrived by
migration with only its version): the store's next checkpoint reads it and folds."""


@dataclass(frozen=True, slots=True)
class StoredState:
    """One session's stored state as read from (or written to) a session store.

    ``data`` is the whole state's bytes (the snapshot with every turn record applied);
    ``version`` is what the next write must name (the etcd ``mod_revision`` of the
    newest key, a counter in memory; never 0); ``owner`` is the shard that wrote it last.
    ``log`` tells the store where its turn log stands; ``applied`` is the record of the
    session's recently applied turns saved with it (oldest first); neither is part of
    equality.
    """

    data: bytes
    version: int
    owner: str
    log: LogPosition = field(default=LogPosition(), compare=False)
    applied: Applied = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class FoldPolicy:
    """When a checkpoint writes a new snapshot (a *fold*) instead of a turn record.

    A fold happens when the log would reach ``log_ratio`` times the snapshot's size (so
    snapshots grow geometrically and a conversation of n bytes costs O(n) bytes of
    writes in all, about 3n with the default 1.0), when the log already holds
    ``max_turns`` records, when it would pass ``max_log_bytes``, or when the record
    would be larger than ``record_share`` of the whole state (a record that big saves
    nothing over a snapshot). The caps bound what a reader (take-over, migration) reads:
    one snapshot plus at most ``max_log_bytes`` of records, ``max_turns`` keys.
    """

    max_turns: int = 256
    max_log_bytes: int = 512 * 1024
    log_ratio: float = 1.0
    record_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_log_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"FoldPolicy.{name} must be an int >= 0, got {value!r}")
        if not 0.0 <= self.record_share <= 1.0:
            raise ConfigError(f"FoldPolicy.record_share must be in [0, 1], got {self.record_share}")
        if not self.log_ratio > 0:
            raise ConfigError(f"FoldPolicy.log_ratio must be > 0, got {self.log_ratio}")

    def should_fold(self, position: LogPosition, record_bytes: int, state_bytes: int) -> bool:
        """Whether a turn adding ``record_bytes`` of record data to a log at ``position``
        (the new state being ``state_bytes`` long) should write a snapshot instead."""
        log_bytes = position.log_bytes + record_bytes
        return (
            log_bytes >= self.log_ratio * position.snapshot_bytes
            or position.turns >= self.max_turns
            or log_bytes > self.max_log_bytes
            or record_bytes > self.record_share * state_bytes
        )


def record_keep(previous: StoredState, data: bytes, fold: FoldPolicy) -> int | None:
    """How a checkpoint from ``previous`` to ``data`` is written, decided the same way by
    every store: the number of leading bytes a turn record keeps, or None for a snapshot
    (the log position is unknown, or ``fold`` says to fold)."""
    if previous.log.record < 0:
        return None
    keep = common_prefix(previous.data, data)
    return None if fold.should_fold(previous.log, len(data) - keep, len(data)) else keep


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One decoded turn record (see the module docstring)."""

    keep: int
    data: bytes
    state_size: int
    state_crc32: int
    owner: str
    applied: Applied = ()


# -- encoding -----------------------------------------------------------------------------


def _pack(header: dict[str, Any], data: bytes, applied: Applied) -> bytes:
    replies = b""
    if applied:
        fields, replies = pack_turns(applied)
        header.update(fields)
    raw_header = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return b"".join((ENVELOPE_MAGIC, _HEADER_LEN.pack(len(raw_header)), raw_header, data, replies))


def _base_header(data: bytes, owner: str, ts: float | None) -> dict[str, Any]:
    return {
        "owner": owner,
        "size": len(data),
        "crc32": zlib.crc32(data),
        "ts": round(time.time() if ts is None else ts, 3),
    }


def encode_envelope(
    data: bytes, *, owner: str, ts: float | None = None, applied: Applied = ()
) -> bytes:
    """Wrap a whole state (a snapshot): ``b"SRS1"`` + 4-byte big-endian header length +
    JSON header ``{"owner", "size", "crc32", "ts"}`` + the data, then the replies of the
    ``applied`` turns when there are any. ``ts`` defaults to now."""
    return _pack(_base_header(data, owner, ts), data, applied)


def encode_record(
    previous: bytes,
    state: bytes,
    *,
    owner: str,
    keep: int | None = None,
    ts: float | None = None,
    applied: Applied = (),
) -> bytes:
    """The turn record that turns ``previous`` into ``state``: it keeps the first
    ``keep`` bytes (default: their longest common prefix) and carries the rest, and the
    turns it ``applied`` (their ids and kept replies)."""
    if keep is None:
        keep = common_prefix(previous, state)
    data = state[keep:]
    header = _base_header(data, owner, ts)
    header.update(keep=keep, state_size=len(state), state_crc32=zlib.crc32(state))
    return _pack(header, data, applied)


# -- decoding -----------------------------------------------------------------------------


def _unpack(key: str, raw: bytes) -> tuple[dict[str, Any], bytes, Applied]:
    """Check magic, header, size and CRC-32; return the header, the data and the
    applied turns."""
    if raw[: len(ENVELOPE_MAGIC)] != ENVELOPE_MAGIC:
        raise MalformedRecord(key, f"not a session state envelope (magic {raw[:4]!r})")
    if len(raw) < _PREFIX_LEN:
        raise MalformedRecord(key, "truncated envelope: no header length")
    (header_len,) = _HEADER_LEN.unpack_from(raw, len(ENVELOPE_MAGIC))
    if header_len > _MAX_HEADER_BYTES or _PREFIX_LEN + header_len > len(raw):
        raise MalformedRecord(
            key, f"header length {header_len} does not fit a {len(raw)}-byte value"
        )
    header_end = _PREFIX_LEN + header_len
    try:
        header: Any = json.loads(raw[_PREFIX_LEN:header_end])
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(key, f"envelope header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise MalformedRecord(key, "envelope header is not a JSON object")
    owner = header.get("owner")
    if not isinstance(owner, str):
        raise MalformedRecord(key, f"envelope 'owner' must be a string, got {owner!r}")
    size, crc = _int_field(key, header, "size"), _int_field(key, header, "crc32")
    data, applied = raw[header_end:], cast(Applied, ())
    if "turns" in header:
        tail = data[size:]
        data = data[:size]
        applied = unpack_turns(key, header, tail)
    if len(data) != size:
        raise MalformedRecord(key, f"state is {len(data)} bytes, the header says {size}")
    actual_crc = zlib.crc32(data)
    if actual_crc != crc:
        raise MalformedRecord(key, f"CRC-32 mismatch: header {crc}, state {actual_crc}")
    return header, bytes(data), applied


def _int_field(key: str, header: dict[str, Any], name: str) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedRecord(key, f"envelope {name!r} must be an int >= 0, got {value!r}")
    return value


def decode_envelope(key: str, raw: bytes, version: int) -> StoredState:
    """Unwrap a snapshot written by :func:`encode_envelope`.

    Checks the magic, the header, the size and the CRC-32; raises
    :class:`~shardroute.errors.MalformedRecord` naming ``key`` on any mismatch (also
    when ``raw`` is a turn record, not a snapshot).
    """
    header, data, applied = _unpack(key, raw)
    if "keep" in header:
        raise MalformedRecord(key, "a turn record where a snapshot was expected")
    return StoredState(
        data=data,
        version=version,
        owner=header["owner"],
        log=LogPosition(snapshot_bytes=len(data)),
        applied=applied,
    )


def decode_record(key: str, raw: bytes) -> TurnRecord:
    """Unwrap a turn record written by :func:`encode_record` (checked like a snapshot,
    plus its ``keep`` / ``state_size`` / ``state_crc32`` fields)."""
    header, data, applied = _unpack(key, raw)
    if "keep" not in header:
        raise MalformedRecord(key, "a snapshot where a turn record was expected")
    return TurnRecord(
        keep=_int_field(key, header, "keep"),
        data=data,
        state_size=_int_field(key, header, "state_size"),
        state_crc32=_int_field(key, header, "state_crc32"),
        owner=header["owner"],
        applied=applied,
    )


def apply_record(key: str, state: bytes, record: TurnRecord) -> bytes:
    """``state`` with ``record`` applied, checked against the record's size and CRC-32
    (:class:`~shardroute.errors.MalformedRecord` naming ``key`` when they differ: a
    record missing, out of order or from another history)."""
    if record.keep > len(state):
        raise MalformedRecord(
            key, f"turn record keeps {record.keep} bytes of a {len(state)}-byte state"
        )
    new = state[: record.keep] + record.data
    if len(new) != record.state_size or zlib.crc32(new) != record.state_crc32:
        raise MalformedRecord(
            key, "turn record does not apply: the folded state's size or CRC-32 differs"
        )
    return new


def common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (binary search over slice
    comparisons: O(n log n) byte compares in C, microseconds for a 1 MiB state)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    view_a, view_b = memoryview(a), memoryview(b)
    # Invariant: the first `low` bytes match; the first `high` bytes do not.
    while high - low > 1:
        middle = (low + high) // 2
        if view_a[low:middle] == view_b[low:middle]:
            low = middle
        else:
            high = middle
    return low
