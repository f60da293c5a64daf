"""EtcdTopologySource against a real etcd: records, leases, outages, compaction."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator

import pytest

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.errors import ConfigError, EtcdUnavailable
from shardroute.etcd import EtcdClient
from shardroute.model import ShardState, Topology
from shardroute.testing.etcd import EtcdServer, free_port
from shardroute.testing.faults import TcpProxy


def record(port: int, **extra: object) -> bytes:
    return json.dumps({"address": f"127.0.0.1:{port}", **extra}).encode()


@pytest.fixture
def source(etcd_endpoint: str) -> Iterator[EtcdTopologySource]:
    src = EtcdTopologySource(etcd_endpoint, "chat", backoff_max_s=0.2)
    yield src
    src.close()


def test_raw_json_shard_appears_and_initial_read_sees_existing(
    etcd: EtcdClient, schema: KeySchema, source: EtcdTopologySource
) -> None:
    etcd.put(schema.shard("s1"), record(7001, zone="z1", capacity=8))
    source.start()
    assert source.current().shard("s1").capacity == 8
    etcd.put(schema.shard("s2"), record(7002, state="draining"))
    etcd.put(schema.load("s2"), b'{"inflight": 5, "ts": 1700000000}')
    t = source.wait_for(lambda t: "s2" in t.shards and "s2" in t.loads, 5)
    assert t.shard("s2").state is ShardState.DRAINING
    assert t.loads["s2"].inflight == 5
    assert t.revision == etcd.revision()
    assert source.staleness() == 0.0 and source.last_error is None


def test_record_written_by_etcdctl_behaves_like_ours(
    etcd_server: EtcdServer, etcd: EtcdClient, schema: KeySchema, source: EtcdTopologySource
) -> None:
    source.start()
    etcdctl = os.path.join(os.path.dirname(etcd_server.binary), "etcdctl")
    subprocess.run(
        [etcdctl, f"--endpoints={etcd_server.endpoint}", "put", schema.shard("hand"),
         '{"address": "10.1.2.3:9000", "zone": "eu-1a", "weight": 2}'],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    etcd.put(schema.shard("ours"), record(9000, zone="eu-1a", weight=2))
    t = source.wait_for(lambda t: {"hand", "ours"} <= set(t.shards), 5)
    hand, ours = t.shard("hand"), t.shard("ours")
    assert (hand.zone, hand.weight, hand.capacity, hand.state) == (
        ours.zone, ours.weight, ours.capacity, ours.state,
    )  # fmt: skip


def test_lease_expiry_removes_the_shard(
    etcd: EtcdClient, schema: KeySchema, source: EtcdTopologySource
) -> None:
    source.start()
    lease = etcd.grant_lease(1)
    etcd.put(schema.shard("ephemeral"), record(7003), lease=lease)
    etcd.put(schema.load("ephemeral"), b"{}", lease=lease)
    source.wait_for(lambda t: "ephemeral" in t.shards, 5)
    # No keep-alive: etcd expires the lease after its TTL and deletes both keys.
    t = source.wait_for(lambda t: "ephemeral" not in t.shards, 10)
    assert "ephemeral" not in t.loads


def test_malformed_values_are_skipped_counted_and_logged_once(
    etcd: EtcdClient,
    schema: KeySchema,
    source: EtcdTopologySource,
    caplog: pytest.LogCaptureFixture,
) -> None:
    etcd.put(schema.shard("bad1"), b"not json")
    source.start()
    etcd.put(schema.shard("bad2"), b'{"address": "h:1", "capacity": -4}')
    etcd.put(schema.shard("good"), record(7004))
    with caplog.at_level(logging.WARNING, logger="shardroute.discovery"):
        t = source.wait_for(lambda t: "good" in t.shards, 5)
    assert set(t.shards) == {"good"}
    assert t.malformed == {schema.shard("bad1"), schema.shard("bad2")}
    assert source.malformed_total == 2
    assert sum(schema.shard("bad2") in r.getMessage() for r in caplog.records) == 1


def test_etcd_killed_and_restarted_during_watch_misses_nothing(
    etcd_server: EtcdServer, etcd: EtcdClient, schema: KeySchema, source: EtcdTopologySource
) -> None:
    for i in range(10):
        etcd.put(schema.shard(f"s{i}"), record(8000 + i))
    source.start()
    revisions: list[int] = []
    source.subscribe(lambda t: revisions.append(t.revision))
    etcd_server.kill()
    source.wait_for(lambda t: source.staleness() > 0, 10)
    assert isinstance(source.last_error, EtcdUnavailable)
    assert len(source.current()) == 10  # last good snapshot stays in use
    etcd_server.start()
    # Changes made while the source is still reconnecting must arrive through the
    # resumed watch: puts, an update and deletes.
    writer = EtcdClient(etcd.options)
    for i in range(10, 30):
        writer.put(schema.shard(f"s{i}"), record(8000 + i))
    writer.put(schema.shard("s0"), record(8000, state="down"))
    for i in range(1, 5):
        writer.delete(schema.shard(f"s{i}"))
    final = writer.revision()
    writer.close()
    t = source.wait_for(lambda t: t.revision >= final, 15)
    expected = {f"s{i}" for i in range(30)} - {f"s{i}" for i in range(1, 5)}
    assert set(t.shards) == expected
    assert t.shard("s0").state is ShardState.DOWN
    assert revisions == sorted(set(revisions))  # no snapshot went back or repeated
    assert source.resyncs == 0 and source.reconnects >= 1
    assert source.staleness() == 0.0


def test_compaction_past_watched_revision_forces_full_resync(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    with TcpProxy(etcd_endpoint) as proxy:
        src = EtcdTopologySource(proxy.endpoint, "chat", backoff_max_s=0.2)
        try:
            etcd.put(schema.shard("old"), record(7100))
            src.start()
            proxy.cut()
            src.wait_for(lambda t: src.staleness() > 0, 10)
            etcd.delete(schema.shard("old"))
            etcd.put(schema.shard("new"), record(7101))
            etcd.put(schema.load("new"), b'{"inflight": 2}')
            etcd.compact(etcd.revision())
            proxy.restore()
            t = src.wait_for(lambda t: "new" in t.loads, 15)
            assert set(t.shards) == {"new"}
            assert src.resyncs == 1
            etcd.put(schema.shard("after"), record(7102))  # the watch goes on afterwards
            src.wait_for(lambda t: "after" in t.shards, 10)
        finally:
            src.close()


def test_unreachable_etcd_keeps_last_snapshot_and_surfaces_error(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    etcd.put(schema.shard("s1"), record(7200))
    with TcpProxy(etcd_endpoint) as proxy:
        src = EtcdTopologySource(proxy.endpoint, "chat", backoff_max_s=0.2)
        try:
            src.start()
            before = src.current()
            proxy.cut()
            src.wait_for(lambda t: src.staleness() > 0, 10)
            assert src.current() is before
            assert isinstance(src.last_error, EtcdUnavailable)
            # Written while the source is cut off: it must arrive through the resumed
            # watch (from the last seen revision + 1), not through a full resync.
            etcd.put(schema.shard("s2"), record(7201))
            etcd.delete(schema.shard("s1"))
            proxy.restore()
            t = src.wait_for(lambda t: "s2" in t.shards and src.staleness() == 0.0, 15)
            assert set(t.shards) == {"s2"}
            assert src.last_error is None and src.resyncs == 0 and src.reconnects >= 1
        finally:
            src.close()


def test_start_against_unreachable_etcd_raises_clear_error() -> None:
    src = EtcdTopologySource(f"127.0.0.1:{free_port()}", "chat", timeout=2)
    with pytest.raises(EtcdUnavailable, match=r"cannot reach etcd at 127\.0\.0\.1:"):
        src.start()
    src.close()


def test_second_endpoint_takes_over(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    etcd.put(schema.shard("s1"), record(7300))
    with TcpProxy(etcd_endpoint) as proxy:
        # Several endpoints of one cluster: whichever is reachable serves the source.
        src = EtcdTopologySource([dead, proxy.endpoint], "chat", backoff_max_s=0.2)
        try:
            src.start()  # whichever endpoint the client tries first
            assert "s1" in src.current().shards
            etcd.put(schema.shard("s2"), record(7301))
            src.wait_for(lambda t: "s2" in t.shards, 10)
        finally:
            src.close()


def test_500_shards_converge(
    etcd: EtcdClient, schema: KeySchema, source: EtcdTopologySource
) -> None:
    source.start()
    for i in range(500):
        etcd.put(schema.shard(f"shard-{i:03d}"), record(10000 + i, zone=f"z{i % 3}"))
    t: Topology = source.wait_for(lambda t: len(t) == 500, 30)
    assert list(t.shards) == sorted(t.shards)
    assert t.shard("shard-499").address == "127.0.0.1:10499"


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ConfigError, match="host:port"):
        EtcdTopologySource("no-port", "chat")
    with pytest.raises(ConfigError, match="user and password"):
        EtcdTopologySource("127.0.0.1:2379", "chat", user="u")
    with pytest.raises(ConfigError, match="service name"):
        EtcdTopologySource("127.0.0.1:2379", "a/b")


def test_servers_follow_overrides_and_state_stays_outside(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    etcd.put(schema.session("conv-1"), b'{"owner": "s1", "epoch": 1}')
    etcd.put(schema.state("conv-1"), b"\xffstate")
    src = EtcdTopologySource(etcd_endpoint, "chat", include_sessions=True)
    plain = EtcdTopologySource(etcd_endpoint, "chat")
    try:
        src.start()
        plain.start()
        assert src.current().overrides["conv-1"].owner == "s1"
        assert plain.current().overrides == {}
        etcd.put(schema.session("conv-2"), b'{"owner": "s2", "epoch": 4, "moving_to": "s3"}')
        t = src.wait_for(lambda t: "conv-2" in t.overrides, 5)
        assert t.overrides["conv-2"].moving_to == "s3"
        before = src.current().revision
        etcd.put(schema.state("conv-2"), b"turn state")  # not watched
        etcd.put(schema.shard("s1"), record(7400))
        t = src.wait_for(lambda t: "s1" in t.shards, 5)
        assert t.revision == etcd.revision() and t.revision > before
        assert src.malformed_total == 0 and plain.malformed_total == 0
    finally:
        src.close()
        plain.close()
