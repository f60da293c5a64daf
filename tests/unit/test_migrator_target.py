"""The mover picks a target on the client's routing view (its freshest loads), not on the
raw etcd snapshot, when a client hands it one (``Migrator(routing_view=...)``)."""

from __future__ import annotations

from types import MappingProxyType

from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.model import LoadReport, Shard, Topology
from shardroute.routing import Router
from shardroute.sessions.migrator import Migrator

SHARDS = [Shard(f"s{i}", f"127.0.0.1:{9000 + i}", capacity=10) for i in range(4)]


def topo(loads: dict[str, int]) -> Topology:
    return Topology(
        service="chat",
        shards=MappingProxyType({s.id: s for s in SHARDS}),
        loads=MappingProxyType({k: LoadReport(inflight=v, ts=1.0) for k, v in loads.items()}),
    )


def mover(view: Topology | None) -> Migrator:
    etcd = EtcdClient(EtcdOptions(endpoints=("127.0.0.1:1",)))  # never called here
    source = InMemoryTopologySource("chat", SHARDS)
    return Migrator(
        etcd, "chat", source, router=Router(), routing_view=None if view is None else lambda: view
    )


def test_the_target_is_picked_on_the_routing_view_when_given() -> None:
    key, source = "conv-7", "s0"
    etcd_view = topo({})
    first = mover(None)._target(key, etcd_view, source, None).id  # the raw snapshot's pick
    assert first != source
    fresh = topo({first: 10})  # the client heard it is full since
    picked = mover(fresh)._target(key, etcd_view, source, None).id
    assert picked not in (source, first)
    assert mover(topo({}))._target(key, etcd_view, source, None).id == first
