"""Issue 6: a drain moves every session (under the cap), a scale-up keeps every history,
from client processes that never saw the sessions.

The scale-up runs on both shells (shard processes of ``ChatShard`` or ``AsyncChatShard``).
The 500-session drain runs on the sync shell only, to keep the suite short and its 30 s
grace clear of a loaded machine; the asyncio drain that moves sessions is covered by
test_session_host.py and test_server_drain.py, which run on both."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from shells import CHAT_CLASSES

from shardroute.client import ShardClient
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.sessions import OverrideStore
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.waiting import wait_until


def start_shard(etcd: str, shard_id: str, **kwargs: object) -> ChatShard:
    shard = ChatShard(
        shard_id=shard_id, service="chat", etcd=etcd, token_delay_s=0, lease_ttl_s=5, **kwargs
    )
    return shard.start()


@pytest.fixture
def shards(etcd_endpoint: str) -> Iterator[dict[str, ChatShard]]:
    started = {
        "a": start_shard(etcd_endpoint, "a", max_concurrent_moves=4),
        "b": start_shard(etcd_endpoint, "b"),
        "c": start_shard(etcd_endpoint, "c"),
    }
    # the drain picks targets from shard a's own view: wait until it shows b and c
    wait_until(lambda: {"b", "c"} <= set(started["a"].topology.shards), 10, "peers")  # type: ignore[union-attr]
    yield started
    for shard in started.values():
        shard.stop()


def test_drain_of_500_sessions_moves_all_under_the_cap(
    etcd_endpoint: str, shards: dict[str, ChatShard]
) -> None:
    with ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client:
        client.source.wait_for(lambda t: set(t.shards) == {"a", "b", "c"}, 10)
        chat = client.stub(chat_pb2_grpc.ChatStub)
        sessions = [f"conv-{n}" for n in range(500)]
        for key in sessions:
            client.router.remember(key, "a")  # steer all 500 conversations to shard a
            tokens = list(chat.Generate(chat_pb2.GenerateRequest(prompt=key), session_key=key))
            assert tokens[-1].shard_id == "a"
        assert len(shards["a"].sessions.keys()) == 500

        shards["a"].drain(grace_s=30)

        summary = shards["a"].last_drain
        assert summary is not None
        assert (summary.moved, summary.failed) == (500, 0)
        assert 1 < summary.peak_concurrent_moves <= 4  # concurrent, and capped
        client.source.wait_for(lambda t: "a" not in t.shards, 15)
        etcd = EtcdClient(EtcdOptions((etcd_endpoint,)))
        try:
            overrides = OverrideStore(etcd, "chat")
            owners = {overrides.get(key).owner for key in sessions}  # type: ignore[union-attr]
        finally:
            etcd.close()
        assert owners <= {"b", "c"} and len(owners) == 2
        for key in sessions[::25]:  # the conversations go on where they moved, whole
            tokens = list(chat.Generate(chat_pb2.GenerateRequest(prompt="again"), session_key=key))
            assert tokens[-1].turns_held == 2 and tokens[-1].shard_id in owners


@pytest.fixture
def shard_server_class(kind: str) -> str:
    """The ``shard_cluster``'s shards are chat shards of the ``kind`` shell."""
    return CHAT_CLASSES[kind]


TALK = r"""
import json, sys
from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
etcd, shards, sessions = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
with ShardClient.connect(etcd, "chat", timeout=30) as client:
    client.source.wait_for(lambda t: len(t) == shards, 15)
    chat = client.stub(chat_pb2_grpc.ChatStub)
    out = {}
    for key in sessions:
        request = chat_pb2.GenerateRequest(prompt="next", max_tokens=2)
        last = list(chat.Generate(request, session_key=key))[-1]
        history = chat.History(chat_pb2.HistoryRequest(), session_key=key, idempotent=True)
        out[key] = [last.turns_held, len(history.turns), last.shard_id]
print(json.dumps(out))
"""


def talk(etcd: str, shards: int, sessions: list[str]) -> dict[str, list[object]]:
    result = subprocess.run(
        [sys.executable, "-c", TALK, etcd, str(shards), ",".join(sessions)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, list[object]] = json.loads(result.stdout)
    return parsed


def test_scale_up_keeps_every_history_across_client_processes(
    etcd_endpoint: str, shard_cluster: ShardCluster
) -> None:
    sessions = [f"user-{n}" for n in range(60)]
    first = talk(etcd_endpoint, 3, sessions)  # process 1: turn 1 of every conversation
    assert all(v[0] == 1 and v[1] == 1 for v in first.values())
    shard_cluster.add()
    # Process 2 has never seen these sessions and routes on the 4-shard ring: some homes
    # moved to the new shard, which must take them over with their history.
    second = talk(etcd_endpoint, 4, sessions)
    assert all(v[0] == 2 and v[1] == 2 for v in second.values()), second
    moved = [k for k in sessions if second[k][2] != first[k][2]]
    assert moved, "adding a shard should move some homes"
    third = talk(etcd_endpoint, 4, sessions)  # process 3: turn 3, still whole
    assert all(v[0] == 3 and v[1] == 3 for v in third.values()), third
