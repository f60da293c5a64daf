"""`shardroute migrate` and `shardroute drain` against real shards."""

from __future__ import annotations

import json
import subprocess
import sys

from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer

CLI = [sys.executable, "-m", "shardroute.cli"]


def test_migrate_and_drain_commands(
    etcd_server: EtcdServer, shard_cluster: ShardCluster, shard_client: ShardClient
) -> None:
    chat = shard_client.stub(chat_pb2_grpc.ChatStub)
    request = chat_pb2.GenerateRequest(prompt="hi", max_tokens=2)
    owner = list(chat.Generate(request, session_key="cli-conv"))[-1].shard_id
    target = next(s for s in shard_cluster.shard_ids if s != owner)
    base = ["--etcd", etcd_server.endpoint, "--service", "chat"]
    result = subprocess.run(
        [*CLI, "migrate", *base, "--session", "cli-conv", "--to", target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    moved = json.loads(result.stdout)
    assert (moved["session"], moved["from"], moved["to"]) == ("cli-conv", owner, target)
    assert moved["state_bytes"] > 0 and moved["from_store"] is False
    reply = list(chat.Generate(request, session_key="cli-conv"))[-1]
    assert reply.shard_id == target and reply.turns_held == 2  # redirected, whole

    again = subprocess.run(
        [*CLI, "migrate", *base, "--session", "cli-conv", "--to", "no-such-shard"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "no-such-shard" in again.stderr
    assert again.stderr.count("\n") == 1

    drained = subprocess.run(
        [*CLI, "drain", *base, "--shard", target, "--wait"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drained.returncode == 0, drained.stderr
    assert "0 not moved, 0 failed" in drained.stdout  # the Drain call's counts
    assert f"shard {target} has left" in drained.stdout
    reply = list(chat.Generate(request, session_key="cli-conv"))[-1]
    assert reply.shard_id != target and reply.turns_held == 3  # moved by the drain
