"""The shard_cluster fixture: real chat shards in subprocesses, registered in real etcd."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import ShardState
from shardroute.testing import chaos_faults
from shardroute.testing.cluster import ShardCluster, ShardStartError
from shardroute.testing.etcd import free_port


def _generate(address: str, session: str, prompt: str) -> list[chat_pb2.Token]:
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        return list(stub.Generate(chat_pb2.GenerateRequest(session_key=session, prompt=prompt)))


def test_cluster_registers_every_shard_in_alternating_zones(shard_cluster: ShardCluster) -> None:
    topology = shard_cluster.source.current()
    assert sorted(topology.shards) == ["shard-0", "shard-1", "shard-2"]
    assert [topology.shard(s).zone for s in sorted(topology.shards)] == [
        "zone-a",
        "zone-b",
        "zone-a",
    ]
    for shard_id, address in shard_cluster.addresses.items():
        assert topology.shard(shard_id).address == address
        assert topology.shard(shard_id).state is ShardState.ACTIVE
        assert topology.load(shard_id) is not None
        tokens = _generate(address, f"s-{shard_id}", "hi")
        assert tokens[0].shard_id == shard_id and tokens[0].turns_held == 1


def test_sigkill_removes_the_shard_when_its_lease_expires(shard_cluster: ShardCluster) -> None:
    shard_cluster.kill("shard-1")
    assert "shard-1" not in shard_cluster.shards
    topology = shard_cluster.wait_for(
        lambda t: "shard-1" not in t.shards, timeout=shard_cluster.lease_ttl_s + 5
    )
    assert sorted(topology.shards) == ["shard-0", "shard-2"]
    assert topology.load("shard-1") is None


@pytest.mark.parametrize("shard_count", [0])
def test_sigterm_drains_lets_streams_finish_deregisters_and_exits_zero(
    shard_cluster: ShardCluster,
) -> None:
    shard_id = shard_cluster.add(token_delay_s=0.02)
    words = [f"w{i}" for i in range(80)]
    with grpc.insecure_channel(shard_cluster.addresses[shard_id]) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        stream = stub.Generate(
            chat_pb2.GenerateRequest(session_key="s", prompt=" ".join(words), max_tokens=200)
        )
        first = next(stream)
        shard_cluster.drain(shard_id, wait=False)
        shard_cluster.wait_for(
            lambda t: shard_id in t.shards and t.shards[shard_id].state is ShardState.DRAINING,
            timeout=5,
        )
        rest = list(stream)  # the in-flight stream runs to its end
        assert stream.code() is grpc.StatusCode.OK
    assert first.index == 0 and len(rest) == 4 + len(words) - 1
    shard_cluster.wait_for(lambda t: shard_id not in t.shards, timeout=5)
    assert shard_cluster.wait_exit(shard_id) == 0


@pytest.mark.parametrize("shard_count", [1])
def test_add_starts_one_more_shard(shard_cluster: ShardCluster) -> None:
    shard_id = shard_cluster.add(zone="zone-c", capacity=8, labels={"gpu": "a100"})
    shard = shard_cluster.source.current().shard(shard_id)
    assert (shard.zone, shard.capacity, dict(shard.labels)) == ("zone-c", 8, {"gpu": "a100"})
    assert shard_cluster[shard_id].running


def test_a_class_that_cannot_start_fails_with_its_log(etcd_endpoint: str, tmp_path: Path) -> None:
    cluster = ShardCluster(etcd_endpoint, server_class="shardroute.model:Shard", log_dir=tmp_path)
    with cluster, pytest.raises(ShardStartError, match="not a ShardServer"):
        cluster.add()


def test_a_proxied_shard_whose_port_was_taken_starts_on_another(
    shard_cluster: ShardCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port picked for a proxied shard is taken by another socket before the shard
    binds it (seen in CI): the start is tried again on a fresh port."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taken = taker.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(chaos_faults, "free_port", lambda: next(picks, None) or free_port())
        proxies = chaos_faults.add_proxied_shards(shard_cluster, 1)
    try:
        [(shard_id, proxy)] = proxies.items()
        assert proxy.target[1] != taken
        assert shard_cluster.source.current().shard(shard_id).address == proxy.endpoint
    finally:
        for proxy in proxies.values():
            proxy.close()
