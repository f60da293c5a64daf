"""The in-memory source: same interface and record semantics as the etcd source."""

from __future__ import annotations

import threading

import pytest

from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.discovery.source import TopologySource
from shardroute.errors import TopologyTimeout, UnknownShard
from shardroute.model import LoadReport, Shard, ShardState, Topology


def test_implements_the_protocol() -> None:
    assert isinstance(InMemoryTopologySource("chat"), TopologySource)


def test_writes_publish_new_snapshots_in_revision_order() -> None:
    source = InMemoryTopologySource("chat", [Shard("a", "h:1")])
    seen: list[Topology] = []
    source.subscribe(seen.append)
    before = source.current()
    source.put_shard(Shard("b", "h:2", zone="z1"))
    source.put_load("a", LoadReport(inflight=2))
    source.remove_shard("a")
    assert [t.revision for t in seen] == [2, 3, 4, 5]
    assert list(source.current().shards) == ["b"]
    assert list(before.shards) == ["a"]  # old snapshots are never mutated
    assert source.current().shard("b").zone == "z1"
    with pytest.raises(UnknownShard, match="'a'"):
        source.current().shard("a")


def test_raw_values_behave_like_etcd_records() -> None:
    source = InMemoryTopologySource("chat")
    source.put(source.schema.shard("x"), b'{"address": "h:1", "state": "down"}')
    source.put(source.schema.shard("y"), b"{broken")
    t = source.current()
    assert t.shard("x").state is ShardState.DOWN
    assert "y" not in t.shards and source.malformed_total == 1
    assert t.malformed == frozenset({source.schema.shard("y")})


def test_set_config() -> None:
    source = InMemoryTopologySource("chat")
    assert source.set_config({"balance_factor": 1.5}).config == {"balance_factor": 1.5}
    assert source.set_config(None).config is None


def test_wait_for_wakes_on_change_and_times_out_with_context() -> None:
    source = InMemoryTopologySource("chat")
    writer = threading.Timer(0.05, source.put_shard, args=(Shard("late", "h:9"),))
    writer.start()
    topology = source.wait_for(lambda t: "late" in t.shards, timeout=5)
    assert "late" in topology.shards
    with pytest.raises(TopologyTimeout, match="did not satisfy"):
        source.wait_for(lambda t: "never" in t.shards, timeout=0.05)


def test_unsubscribe_and_failing_subscriber_do_not_break_publishing() -> None:
    source = InMemoryTopologySource("chat")
    calls: list[int] = []

    def boom(_: Topology) -> None:
        raise RuntimeError("subscriber bug")

    source.subscribe(boom)
    unsubscribe = source.subscribe(lambda t: calls.append(t.revision))
    source.put_shard(Shard("a", "h:1"))
    unsubscribe()
    source.put_shard(Shard("b", "h:2"))
    assert calls == [1]
    assert len(source.current()) == 2
    assert source.staleness() == 0.0 and source.last_error is None
