"""Poison values in etcd (issue 13): bounded parsing, skipped and counted, logged once."""

from __future__ import annotations

import json
import logging

import pytest

from shardroute.discovery.changes import KeyChange, apply_changes
from shardroute.discovery.keys import KeySchema, decode_key, key_text
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.discovery.records import (
    MAX_CAPACITY,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    MAX_WEIGHT,
    decode_json,
    parse_load,
    parse_override,
    parse_shard,
)
from shardroute.errors import MalformedRecord
from shardroute.model import Topology
from shardroute.routing import Router

KEY = "/shardroute/chat/shards/s1"
SCHEMA = KeySchema("chat")


def nested(depth: int) -> bytes:
    return b'{"address": "h:1", "labels": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


POISON_SHARD_VALUES = {
    "nested 5000 deep": nested(5000),
    "nested past the bound": nested(MAX_JSON_DEPTH),
    "weight 1e9": b'{"address": "h:1", "weight": 1e9}',
    "absurd capacity": b'{"address": "h:1", "capacity": 1000000000000}',
    "capacity as huge float": b'{"address": "h:1", "capacity": 1e300}',
    "oversized": json.dumps({"address": "h:1", "zone": "z" * MAX_RECORD_BYTES}).encode(),
    "not UTF-8": b'{"address": "h:1", "zone": "\xff"}',
    "lone surrogate": b'{"address": "h:1", "zone": "\\ud800"}',
    "lone surrogate label": b'{"address": "h:1", "labels": {"a": "\\udfff"}}',
    "lease past int64": b'{"address": "h:1", "lease": 9223372036854775808}',
}


@pytest.mark.parametrize("name", sorted(POISON_SHARD_VALUES))
def test_poison_shard_values_are_malformed(name: str) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_shard(KEY, "s1", POISON_SHARD_VALUES[name])
    assert info.value.key == KEY
    assert len(str(info.value)) < 500  # a short reason, not the value


def test_bounds_themselves_are_accepted() -> None:
    ok = json.dumps({"address": "h:1", "weight": MAX_WEIGHT, "capacity": MAX_CAPACITY})
    shard = parse_shard(KEY, "s1", ok.encode())
    assert (shard.weight, shard.capacity) == (MAX_WEIGHT, MAX_CAPACITY)
    assert decode_json(KEY, b'{"a": ' * (MAX_JSON_DEPTH - 1) + b"1" + b"}" * (MAX_JSON_DEPTH - 1))


@pytest.mark.parametrize(
    "raw", [b'{"inflight": 10000000000}', b'{"sessions": 1e300}', b'{"queue_depth": 1e999}']
)
def test_absurd_load_counts_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedRecord):
        parse_load("/shardroute/chat/load/s1", raw)


def test_override_epoch_past_int64_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match="'epoch' must be <="):
        parse_override("k", b'{"owner": "a", "epoch": 18446744073709551615}')


def test_keys_that_are_not_utf8_read_without_failing() -> None:
    raw = b"/shardroute/chat/shards/\xff\xfe"
    key = decode_key(raw)
    assert key.encode("utf-8", "surrogateescape") == raw
    assert key_text(key) == "/shardroute/chat/shards/\\xff\\xfe"
    assert key_text("/shardroute/chat/shards/été") == "/shardroute/chat/shards/été"


def test_a_poison_among_good_changes_is_skipped_and_the_rest_applied() -> None:
    bad_key = decode_key(b"/shardroute/chat/shards/\xff")
    changes = [
        KeyChange(SCHEMA.shard("a"), b'{"address": "h:1"}', 1),
        KeyChange(SCHEMA.shard("deep"), nested(5000), 2),
        KeyChange(bad_key, b'{"address": "h:2"}', 3),
        KeyChange(SCHEMA.shard("heavy"), b'{"address": "h:3", "weight": 1e9}', 4),
        KeyChange(SCHEMA.config, b'{"routing": ' + b"[" * 5000 + b"]" * 5000 + b"}", 5),
        KeyChange(SCHEMA.session("k"), nested(5000), 6),
        KeyChange(SCHEMA.shard("b"), b'{"address": "h:4"}', 7),
    ]
    topology, errors = apply_changes(Topology("chat"), SCHEMA, changes, include_sessions=True)
    assert list(topology.shards) == ["a", "b"] and topology.revision == 7
    assert topology.malformed == {
        SCHEMA.shard("deep"),
        "/shardroute/chat/shards/\\xff",
        SCHEMA.shard("heavy"),
        SCHEMA.config,
        SCHEMA.session("k"),
    }
    assert len(errors) == 5 and topology.config is None
    Router().route("conv-1", topology)  # the ring builds, at its bounded size
    # Deleting the key that is not UTF-8 clears it.
    cleared, _ = apply_changes(topology, SCHEMA, [KeyChange(bad_key, None, 8)])
    assert "/shardroute/chat/shards/\\xff" not in cleared.malformed


def test_a_poison_rewritten_is_logged_once_and_counted_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = InMemoryTopologySource("chat")
    caplog.set_level(logging.WARNING, "shardroute.discovery")
    for _ in range(5):
        source.put(SCHEMA.shard("x"), b'{"address": "h:1", "weight": 1e9}')
    source.put(SCHEMA.shard("y"), b'{"address": "h:1"}')
    assert source.malformed_total == 5
    assert [r.getMessage() for r in caplog.records if "shards/x" in r.getMessage()] == [
        "skipping malformed record at '/shardroute/chat/shards/x': "
        "'weight' must be <= 100.0, got 1000000000.0 (ignored until rewritten; no data is "
        "at risk; fix what writes it, docs/etcd-schema.md)"
    ]
    # Once fixed and broken again, it is news again: logged once more.
    source.put(SCHEMA.shard("x"), b'{"address": "h:1"}')
    source.put(SCHEMA.shard("x"), b"[")
    assert sum("shards/x" in r.getMessage() for r in caplog.records) == 2
