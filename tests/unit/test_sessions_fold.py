"""Pure parts of the turn log: common prefixes, records, folding (issue 9)."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardroute.errors import ConfigError, MalformedRecord
from shardroute.sessions import FoldPolicy, LogPosition
from shardroute.sessions.envelope import (
    apply_record,
    common_prefix,
    decode_envelope,
    decode_record,
    encode_envelope,
    encode_record,
)

KEY = "/shardroute/chat/state/s1/00000000000000000007"


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_common_prefix_is_the_longest(a: bytes, b: bytes) -> None:
    n = common_prefix(a, b)
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]


@given(st.binary(max_size=500), st.binary(max_size=500))
def test_a_record_turns_the_old_state_into_the_new(old: bytes, new: bytes) -> None:
    record = decode_record(KEY, encode_record(old, new, owner="s1"))
    assert apply_record(KEY, old, record) == new
    assert record.keep == common_prefix(old, new)


def test_a_json_turn_record_holds_only_the_new_turn() -> None:
    history = [["hello", "hi there"]] * 200
    old = json.dumps(history).encode()
    new = json.dumps([*history, ["one more", "answer"]]).encode()
    record = decode_record(KEY, encode_record(old, new, owner="s1"))
    assert record.data == b', ["one more", "answer"]]'
    assert record.keep == len(old) - 1


def test_a_record_applied_to_another_state_is_malformed() -> None:
    record = decode_record(KEY, encode_record(b"abcdef", b"abcdefgh", owner="s1"))
    with pytest.raises(MalformedRecord, match="does not apply") as info:
        apply_record(KEY, b"abcdeX", record)  # same length, other bytes: CRC differs
    assert info.value.key == KEY
    with pytest.raises(MalformedRecord, match="keeps 6 bytes"):
        apply_record(KEY, b"abc", record)


def test_record_layout_matches_the_docs() -> None:
    raw = encode_record(b"ab", b"abcd", owner="s2", ts=5.0)
    header_len = int.from_bytes(raw[4:8], "big")
    header = json.loads(raw[8 : 8 + header_len])
    assert header == {
        "owner": "s2",
        "size": 2,
        "crc32": zlib.crc32(b"cd"),
        "ts": 5.0,
        "keep": 2,
        "state_size": 4,
        "state_crc32": zlib.crc32(b"abcd"),
    }
    assert raw[8 + header_len :] == b"cd"


def test_snapshots_and_records_are_not_confused() -> None:
    with pytest.raises(MalformedRecord, match="turn record where a snapshot"):
        decode_envelope(KEY, encode_record(b"a", b"ab", owner="x"), 1)
    with pytest.raises(MalformedRecord, match="snapshot where a turn record"):
        decode_record(KEY, encode_envelope(b"ab", owner="x"))


def test_fold_policy_thresholds() -> None:
    policy = FoldPolicy(max_turns=3, max_log_bytes=100, log_ratio=1.0, record_share=0.5)
    big = 10_000  # a snapshot large enough that the ratio rule stays quiet
    assert not policy.should_fold(LogPosition(2, 10, big), 10, big)
    assert policy.should_fold(LogPosition(3, 10, big), 10, big)  # turns
    assert policy.should_fold(LogPosition(0, 95, big), 10, big)  # bytes
    assert policy.should_fold(LogPosition(0, 0, big), 60, 100)  # a record over half the state
    assert policy.should_fold(LogPosition(1, 40, 50), 10, big)  # the log reached the snapshot
    assert not policy.should_fold(LogPosition(1, 30, 50), 10, big)


def test_fold_policy_keeps_writes_linear() -> None:
    """Simulated: 2,000 turns of 1 KiB; total bytes written stay O(n) (about 3n)."""
    policy = FoldPolicy(max_turns=10**6, max_log_bytes=2**40)
    position, state, written = LogPosition(), 0, 0
    for _ in range(2000):
        state += 1024
        if position.snapshot_bytes == 0 or policy.should_fold(position, 1024, state):
            position, written = LogPosition(snapshot_bytes=state), written + state
        else:
            position = LogPosition(
                position.turns + 1, position.log_bytes + 1024, position.snapshot_bytes
            )
            written += 1024
    assert written < 4 * state


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_turns": -1},
        {"max_log_bytes": 1.5},
        {"record_share": 2.0},
        {"max_turns": True},
        {"log_ratio": 0},
    ],
)
def test_fold_policy_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FoldPolicy(**kwargs)  # type: ignore[arg-type]
