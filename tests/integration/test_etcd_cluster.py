"""A real 3-member etcd cluster (the ``etcd_cluster`` fixture): the client fails over
between its members when one dies, the leader included, and a watch resumes on another
member without missing an event (issue 14, "A real etcd cluster")."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.errors import EtcdUnavailable
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.testing.etcd import free_port
from shardroute.testing.etcd_cluster import EtcdCluster, EtcdMember


def record(port: int) -> bytes:
    return json.dumps({"address": f"127.0.0.1:{port}"}).encode()


def client_on(cluster: EtcdCluster, member: EtcdMember) -> EtcdClient:
    """A client on every member whose calls go to ``member`` first (the etcd3 package
    picks the first member at random: try until it picked this one)."""
    for _ in range(60):
        client = EtcdClient(EtcdOptions(cluster.endpoints, timeout=5.0))
        client.revision()
        if client.current_endpoint == member.endpoint:
            return client
        client.close()
    raise AssertionError(f"no client picked {member.endpoint} first in 60 tries")


@pytest.fixture
def schema(request: pytest.FixtureRequest) -> KeySchema:
    return KeySchema(request.node.name.replace("_", "-")[:40])


def test_the_fixture_is_a_cluster_with_one_leader(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    followers = etcd_cluster.followers()
    assert len(etcd_cluster.members) == 3 and len(followers) == 2
    assert leader not in followers and {leader, *followers} == set(etcd_cluster.members)
    assert len({m.member_id for m in etcd_cluster.members}) == 3
    etcd_cluster.kill(followers[0])
    assert etcd_cluster.wait_for_leader() is leader  # a follower's loss elects nobody
    etcd_cluster.restart(followers[0])
    assert len(etcd_cluster.running) == 3


def test_a_follower_lost_costs_no_call(etcd_cluster: EtcdCluster, schema: KeySchema) -> None:
    victim = etcd_cluster.followers()[0]
    client = client_on(etcd_cluster, victim)
    try:
        version = client.put(schema.shard("s"), record(1))
        etcd_cluster.kill(victim)
        started = time.monotonic()
        for i in range(20):  # compare-and-swap writes: each succeeds on the first call
            new = client.put_if_version(schema.shard("s"), record(i + 2), version)
            assert new is not None and new > version
            version = new
        assert client.range_prefix(schema.prefix)[1][0][1] == record(21)
        assert time.monotonic() - started < 2.0  # no waiting on the dead member
        assert client.current_endpoint != victim.endpoint
    finally:
        client.close()


def test_the_leader_lost_costs_reads_nothing_and_writes_resume(
    etcd_cluster: EtcdCluster, schema: KeySchema
) -> None:
    leader = etcd_cluster.leader()
    client = client_on(etcd_cluster, leader)
    try:
        version = client.put(schema.shard("s"), record(1))
        etcd_cluster.kill(leader)
        # Reads go on: the dead member refuses the connection, a follower answers
        # once the others elected a leader ("leader changed"/"no leader" are retried).
        assert client.get(schema.shard("s")) == record(1)
        assert client.current_endpoint != leader.endpoint
        new_leader = etcd_cluster.wait_for_leader()
        assert new_leader is not leader
        for i in range(10):
            new = client.put_if_version(schema.shard("s"), record(i + 2), version)
            assert new is not None
            version = new
        assert client.get_version(schema.shard("s")) == version
    finally:
        client.close()


def test_every_member_unreachable_is_a_clear_error() -> None:
    endpoints = tuple(f"127.0.0.1:{free_port()}" for _ in range(3))
    client = EtcdClient(EtcdOptions(endpoints, timeout=0.5))
    try:
        with pytest.raises(EtcdUnavailable) as caught:
            client.put_if_version("/k", b"v", 0)
    finally:
        client.close()
    message = str(caught.value)
    assert "no etcd endpoint answered within 0.5s" in message
    assert all(endpoint in message for endpoint in endpoints)
    assert "it was not applied" in message and "majority of the etcd members" in message


@pytest.fixture
def writer(etcd_cluster: EtcdCluster) -> Iterator[EtcdClient]:
    client = etcd_cluster.client()
    yield client
    client.close()


def test_watch_resumes_on_another_member_without_missing_events(
    etcd_cluster: EtcdCluster, writer: EtcdClient, schema: KeySchema
) -> None:
    for i in range(5):
        writer.put(schema.shard(f"s{i}"), record(7000 + i))
    source = EtcdTopologySource(",".join(etcd_cluster.endpoints), schema.service, backoff_max_s=0.2)
    try:
        source.start()
        seen = writer.put(schema.shard("s4"), record(7004))  # the watch is up once seen
        source.wait_for(lambda t: t.revision >= seen, 10)
        watched = next(m for m in etcd_cluster.members if m.endpoint == source.etcd_endpoint)
        etcd_cluster.kill(watched)
        # Changes while the watch is broken: puts and a delete, each one event.
        writer.delete(schema.shard("s0"))
        for i in range(5, 10):
            last = writer.put(schema.shard(f"s{i}"), record(7000 + i))
        topology = source.wait_for(lambda t: t.revision >= last, 15)
        assert set(topology.shards) == {f"s{i}" for i in range(1, 10)}
        assert source.resyncs == 0  # resumed from its revision: every event, no re-read
        assert source.reconnects >= 1
        assert source.etcd_endpoint != watched.endpoint
        assert source.staleness() == 0.0
    finally:
        source.close()


def test_a_cluster_that_cannot_start_leaves_no_member_running() -> None:
    cluster = EtcdCluster(start_timeout=10.0)
    host, port = cluster.members[2].endpoint.rsplit(":", 1)
    with socket.socket() as taken:  # the third member's client port is taken
        taken.bind((host, int(port)))
        taken.listen()
        with pytest.raises(EtcdUnavailable, match="exited at start-up"), cluster:
            pass
    assert cluster.running == []  # the two that started were closed, not left behind
