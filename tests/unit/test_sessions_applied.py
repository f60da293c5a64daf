"""The record of applied turns (pure): bounded, ordered, carried by envelopes and turn
records, read back by a store; old envelopes without it still load."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from shardroute.errors import ConfigError, InvalidTurnId, MalformedRecord
from shardroute.sessions import AppliedTurn, InMemorySessionStore, StoredState, TurnMemory
from shardroute.sessions._turn_base import call_turn_id
from shardroute.sessions.applied import added, check_turn_id, find
from shardroute.sessions.envelope import (
    FoldPolicy,
    decode_envelope,
    decode_record,
    encode_envelope,
    encode_record,
)

KEY = "/shardroute/counter/state/s1"


def turns(*ids: str, reply: bytes | None = b"r") -> tuple[AppliedTurn, ...]:
    return tuple(AppliedTurn(turn_id, reply) for turn_id in ids)


def test_memory_keeps_the_newest_turns_in_order() -> None:
    memory = TurnMemory(max_turns=3)
    applied: tuple[AppliedTurn, ...] = ()
    for n in range(5):
        applied = memory.remember(applied, AppliedTurn(f"t{n}", f"reply {n}".encode()))
    assert [t.turn_id for t in applied] == ["t2", "t3", "t4"]
    assert find(applied, "t4") == AppliedTurn("t4", b"reply 4")
    assert find(applied, "t1") is None  # out of the window: forgotten


def test_memory_caps_replies_and_drops_older_replies_first() -> None:
    memory = TurnMemory(max_turns=10, max_reply_bytes=4, max_bytes=6)
    applied = memory.remember((), AppliedTurn("big", b"12345"))
    assert applied == (AppliedTurn("big", None),)  # over the reply cap: applied, no reply
    applied = memory.remember(applied, AppliedTurn("a", b"aaaa"))
    applied = memory.remember(applied, AppliedTurn("b", b"bbbb"))
    # 8 bytes of replies > 6: the older reply goes, its id stays
    assert applied == (AppliedTurn("big"), AppliedTurn("a"), AppliedTurn("b", b"bbbb"))
    assert TurnMemory(max_turns=0).remember((), AppliedTurn("x", b"")) == ()


@pytest.mark.parametrize("field", ["max_turns", "max_reply_bytes", "max_bytes"])
def test_memory_rejects_bad_limits(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TurnMemory(**{field: -1})  # type: ignore[arg-type]


def test_turn_ids_are_checked() -> None:
    assert check_turn_id("Ab9_-.:x") == "Ab9_-.:x"
    for bad in ["", "a" * 65, "has space", "é", "a/b"]:
        with pytest.raises(InvalidTurnId, match="nothing was executed"):
            check_turn_id(bad)


def test_added_is_what_a_record_stores() -> None:
    assert added(turns("a", "b"), turns("a", "b", "c")) == turns("c")
    assert added(turns("a"), ()) == ()


def test_a_call_says_whether_it_streams() -> None:
    class Context:
        def __init__(self, value: str) -> None:
            self.value = value

        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("x-shardroute-turn-id", self.value),)

    assert call_turn_id(Context("abc.0x1")) == ("abc.0x1", False)
    assert call_turn_id(Context("abc.0x1;stream")) == ("abc.0x1", True)
    with pytest.raises(InvalidTurnId, match="parameter"):
        call_turn_id(Context("abc.0x1;other"))


def test_snapshot_round_trip_with_applied_turns() -> None:
    applied = (AppliedTurn("t1", b"one"), AppliedTurn("t2"), AppliedTurn("t3", b""))
    raw = encode_envelope(b"state", owner="s1", applied=applied)
    stored = decode_envelope(KEY, raw, 7)
    assert (stored.data, stored.version, stored.owner) == (b"state", 7, "s1")
    assert stored.applied == applied


def test_record_round_trip_with_applied_turns() -> None:
    bare = encode_record(b"abc", b"abcdef", owner="s2", applied=turns("t8", reply=None))
    assert b"turns_crc32" not in bare  # no replies, no CRC of them
    assert decode_record(KEY, bare).applied == turns("t8", reply=None)
    raw = encode_record(b"abc", b"abcdef", owner="s2", applied=turns("t9"))
    record = decode_record(KEY, raw)
    assert (record.keep, record.data, record.applied) == (3, b"def", turns("t9"))


def test_envelopes_without_turns_are_unchanged_and_load() -> None:
    """An envelope written before turn ids (no ``turns`` in the header) loads with an
    empty record, and writing no turns gives the very same bytes as before."""
    header = {"owner": "s1", "size": 5, "crc32": zlib.crc32(b"hello"), "ts": 1.0}
    raw_header = json.dumps(header).encode()
    old = b"SRS1" + struct.pack(">I", len(raw_header)) + raw_header + b"hello"
    assert decode_envelope(KEY, old, 3).applied == ()
    assert b"turns" not in encode_envelope(b"hello", owner="s1", ts=1.0)
    assert decode_record(KEY, encode_record(b"a", b"ab", owner="s1")).applied == ()


def test_corrupt_replies_are_refused() -> None:
    raw = encode_envelope(b"state", owner="s1", applied=turns("t1", reply=b"reply"))
    with pytest.raises(MalformedRecord, match="CRC-32 mismatch in the applied turns"):
        decode_envelope(KEY, raw[:-1] + b"X", 1)
    with pytest.raises(MalformedRecord, match="the header says"):
        decode_envelope(KEY, raw + b"!", 1)  # bytes after the replies


def test_store_saves_the_record_through_records_and_folds() -> None:
    memory = TurnMemory(max_turns=4)
    store = InMemorySessionStore(fold=FoldPolicy(max_turns=2))
    assert store.records_turns
    previous: StoredState | None = None
    applied: tuple[AppliedTurn, ...] = ()
    data = b""
    for n in range(7):  # snapshots and turn records, as the fold policy decides
        data += b"x"
        applied = memory.remember(applied, AppliedTurn(f"t{n}", str(n).encode()))
        previous = store.checkpoint(KEY, data, owner="s1", previous=previous, applied=applied)
        assert previous.applied == applied
    loaded = store.load(KEY)
    assert loaded is not None and loaded.applied == applied
    assert [t.turn_id for t in applied] == ["t3", "t4", "t5", "t6"]
    # Without ``applied`` the record stays as it was (a checkpoint from older code).
    again = store.checkpoint(KEY, data + b"y", owner="s1", previous=previous)
    assert again.applied == applied
