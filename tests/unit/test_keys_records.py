"""Key schema and record parsing: what etcd values mean, and clear errors for bad ones."""

from __future__ import annotations

import json

import pytest

from shardroute.discovery.keys import KeyKind, KeySchema
from shardroute.discovery.records import encode_load, encode_shard, parse_load, parse_shard
from shardroute.errors import ConfigError, MalformedRecord
from shardroute.model import LoadReport, Shard, ShardState

KEY = "/shardroute/chat/shards/s1"


def test_keys_follow_the_documented_schema() -> None:
    schema = KeySchema("chat")
    assert schema.shard("s1") == "/shardroute/chat/shards/s1"
    assert schema.load("s1") == "/shardroute/chat/load/s1"
    assert schema.session("conv-9") == "/shardroute/chat/sessions/conv-9"
    assert schema.config == "/shardroute/chat/config"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/shardroute/chat/shards/s1", (KeyKind.SHARD, "s1")),
        ("/shardroute/chat/load/s1", (KeyKind.LOAD, "s1")),
        ("/shardroute/chat/sessions/k", (KeyKind.SESSION, "k")),
        ("/shardroute/chat/config", (KeyKind.CONFIG, "")),
        ("/shardroute/chat/shards/a/b", (KeyKind.OTHER, "shards/a/b")),
        ("/shardroute/chat/shards/", (KeyKind.OTHER, "shards/")),
        ("/shardroute/chatter/shards/s1", (KeyKind.OTHER, "/shardroute/chatter/shards/s1")),
        ("/shardroute/chat/other/x", (KeyKind.OTHER, "other/x")),
    ],
)
def test_classify(key: str, expected: tuple[KeyKind, str]) -> None:
    assert KeySchema("chat").classify(key) == expected


@pytest.mark.parametrize("name", ["", "a/b", " a", "a\n"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        KeySchema(name)
    with pytest.raises(ConfigError):
        KeySchema("chat").shard(name)


def test_minimal_record_gets_documented_defaults() -> None:
    shard = parse_shard(KEY, "s1", b'{"address": "10.0.0.1:7000"}')
    assert shard == Shard(id="s1", address="10.0.0.1:7000")
    assert (shard.zone, shard.region, shard.weight, shard.capacity) == ("", "", 1.0, 64)
    assert shard.state is ShardState.ACTIVE and dict(shard.labels) == {} and shard.schema == 1


def test_full_record_and_unknown_fields_ignored() -> None:
    raw = json.dumps(
        {
            "address": "h:1",
            "zone": "eu-1a",
            "region": "eu-1",
            "weight": 2.5,
            "capacity": 8,
            "state": "draining",
            "labels": {"gpu": "a100"},
            "schema": 1,
            "future_field": [1, 2],
        }
    ).encode()
    shard = parse_shard(KEY, "s1", raw)
    assert shard.zone == "eu-1a" and shard.region == "eu-1"
    assert shard.weight == 2.5 and shard.capacity == 8
    assert shard.state is ShardState.DRAINING and not shard.available
    assert shard.labels["gpu"] == "a100"


def test_encode_parse_round_trip() -> None:
    shard = Shard("s1", "h:1", zone="z", weight=3, capacity=5, state=ShardState.DOWN)
    assert parse_shard(KEY, "s1", encode_shard(shard)) == shard
    report = LoadReport(inflight=3, queue_depth=1, sessions=9, latency_ms_p95=12.5, ts=1.5)
    assert parse_load("k", encode_load(report)) == report


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{}", "missing required field 'address'"),
        (b'{"address": 5}', "'address' must be a string"),
        (b'{"address": "nohost"}', "'address' must be 'host:port'"),
        (b'{"address": "h:99999"}', "'address' must be 'host:port'"),
        (b'{"address": "h:1", "capacity": -1}', "'capacity' must be > 0"),
        (b'{"address": "h:1", "capacity": 1.5}', "'capacity' must be an integer"),
        (b'{"address": "h:1", "capacity": true}', "'capacity' must be an integer"),
        (b'{"address": "h:1", "weight": 0}', "'weight' must be > 0"),
        (b'{"address": "h:1", "weight": "2"}', "'weight' must be a finite number"),
        (b'{"address": "h:1", "state": "sleeping"}', "'state' must be one of"),
        (b'{"address": "h:1", "labels": {"a": 1}}', "'labels' must be an object of strings"),
        (b'{"address": "h:1", "zone": null}', "'zone' must be a string"),
        (b'{"address": "h:1", "schema": 0}', "'schema' must be >= 1"),
    ],
)
def test_malformed_shard_records_name_key_and_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord) as info:
        parse_shard(KEY, "s1", raw)
    assert info.value.key == KEY
    assert reason in info.value.reason
    assert KEY in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [b'{"inflight": -1}', b'{"inflight": "3"}', b'{"ts": "now"}', b'{"latency_ms_p50": -2}', b"1"],
)
def test_malformed_load_reports(raw: bytes) -> None:
    with pytest.raises(MalformedRecord):
        parse_load("/shardroute/chat/load/s1", raw)


def test_load_defaults_to_zero() -> None:
    assert parse_load("k", b"{}") == LoadReport()
