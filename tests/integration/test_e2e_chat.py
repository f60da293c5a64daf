"""Issue 5 end to end: ShardClient / AsyncShardClient, chat shards in subprocesses, etcd."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.errors import ShardRouteError
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import ShardState
from shardroute.testing.cluster import ShardCluster


@pytest.fixture
def shard_count() -> int:
    return 4


@pytest.fixture
def client(etcd_endpoint: str, shard_cluster: ShardCluster) -> Iterator[ShardClient]:
    with ShardClient.connect(etcd_endpoint, "chat", zone="zone-a", timeout=10) as c:
        c.source.wait_for(lambda t: len(t) == 4, 10)
        yield c


def generate(chat: object, session: str) -> list[chat_pb2.Token]:
    request = chat_pb2.GenerateRequest(prompt="hello", max_tokens=4)
    return list(chat.Generate(request, session_key=session))  # type: ignore[attr-defined]


def test_affinity_holds_across_turns(client: ShardClient) -> None:
    chat = client.stub(chat_pb2_grpc.ChatStub)
    for n in range(8):
        session = f"conv-{n}"
        shards = set()
        for turn in range(1, 4):
            tokens = generate(chat, session)
            assert tokens[-1].turns_held == turn  # the shard kept the whole conversation
            shards.add(tokens[-1].shard_id)
        assert len(shards) == 1
        history = chat.History(chat_pb2.HistoryRequest(), session_key=session, idempotent=True)
        assert len(history.turns) == 3 and history.shard_id in shards


def test_sigkill_under_load_fails_no_idempotent_call(
    client: ShardClient, shard_cluster: ShardCluster
) -> None:
    chat = client.stub(chat_pb2_grpc.ChatStub)
    topology = client.source.current()
    victim = next(s.id for s in topology.shards.values() if s.zone == "zone-a")
    sessions = [f"s-{n}" for n in range(60)]
    assert any(client.route(k).shard.id == victim for k in sessions)
    failures: list[BaseException] = []
    done = threading.Event()
    calls = [0]

    def load() -> None:
        i = 0
        while not done.is_set():
            try:
                chat.History(
                    chat_pb2.HistoryRequest(), session_key=sessions[i % 60], idempotent=True
                )
                calls[0] += 1
            except ShardRouteError as exc:
                failures.append(exc)
            i += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while calls[0] < 200 and not failures:
            done.wait(0.01)  # let load build up before the kill
        shard_cluster.kill(victim)
        # The dead shard leaves every client's topology once its lease expires.
        client.source.wait_for(lambda t: victim not in t.shards, 15)
        before = calls[0]
        while calls[0] < before + 200 and not failures:
            done.wait(0.01)
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    assert client.stats.snapshot().get("errors", 0) == 0
    assert all(client.route(k).shard.id != victim for k in sessions)


def test_draining_shard_gets_no_new_sessions(
    client: ShardClient, shard_cluster: ShardCluster
) -> None:
    chat = client.stub(chat_pb2_grpc.ChatStub)
    victim = shard_cluster.shard_ids[0]
    shard_cluster.drain(victim, wait=False)
    client.source.wait_for(
        lambda t: victim not in t.shards or t.shards[victim].state is ShardState.DRAINING, 10
    )
    for n in range(40):
        tokens = generate(chat, f"new-{n}")
        assert tokens[-1].shard_id != victim
    assert shard_cluster.wait_exit(victim) == 0


def test_async_client_same_behaviour(etcd_endpoint: str, shard_cluster: ShardCluster) -> None:
    async def main() -> None:
        client = await AsyncShardClient.connect(etcd_endpoint, "chat", zone="zone-b")
        try:
            await asyncio.to_thread(client.source.wait_for, lambda t: len(t) == 4, 10)
            chat = client.stub(chat_pb2_grpc.ChatStub)
            for turn in range(1, 4):
                request = chat_pb2.GenerateRequest(prompt="hi", max_tokens=3)
                tokens = [t async for t in chat.Generate(request, session_key="async-conv")]
                assert tokens[-1].turns_held == turn
            history = await chat.History(
                chat_pb2.HistoryRequest(), session_key="async-conv", idempotent=True
            )
            assert len(history.turns) == 3
            assert history.shard_id == client.route("async-conv").shard.id
        finally:
            await client.close()

    asyncio.run(main())
