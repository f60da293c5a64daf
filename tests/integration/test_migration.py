"""Issue 6: sessions move between real shards (subprocesses) without losing a turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from chat_calls import history, turn

from shardroute.client import ShardClient
from shardroute.errors import (
    EtcdUnavailable,
    MigrationConflict,
    OutcomeUnknown,
    ShardRouteError,
)
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer


@pytest.fixture
def shard_count() -> int:
    return 3


@pytest.fixture
def client(shard_client: ShardClient) -> Iterator[ShardClient]:
    yield shard_client


def test_migration_under_concurrent_turns_keeps_history_in_order(client: ShardClient) -> None:
    session = "conv-busy"
    for i in range(3):
        turn(client, session, f"p{i}")
    answered = [f"p{i}" for i in range(3)]
    failures: list[BaseException] = []
    owners: list[str] = []
    stop = threading.Event()

    def talk() -> None:
        i = 3
        while not stop.is_set():
            try:
                owners.append(turn(client, session, f"p{i}").shard_id)
                answered.append(f"p{i}")
            except ShardRouteError as exc:
                failures.append(exc)
                return
            i += 1

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        before = len(answered)
        while len(answered) < before + 3:
            stop.wait(0.01)
        source = owners[-1]  # where the conversation lives (the reply says)
        target = next(s for s in client.source.current().shards if s != source)
        result = client.migrate(session, target=target)
        assert (result.source, result.target) == (source, target)
        after = len(answered)
        while len(answered) < after + 3 and not failures:
            stop.wait(0.01)
    finally:
        stop.set()
        talker.join(30)
    assert failures == []
    assert history(client, session) == answered  # complete, in order, nothing twice
    assert turn(client, session, "last").shard_id == target


def test_two_concurrent_migrations_exactly_one_wins(client: ShardClient) -> None:
    session = "conv-contended"
    turn(client, session, "hello")
    source = client.route(session).shard.id
    others = [s for s in client.source.current().shards if s != source]
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def move(target: str) -> None:
        barrier.wait()
        try:
            outcomes.append(client.migrate(session, target=target))
        except MigrationConflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=move, args=(t,)) for t in others[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wins = [o for o in outcomes if not isinstance(o, MigrationConflict)]
    assert len(outcomes) == 2 and len(wins) == 1
    assert history(client, session) == ["hello"]


def test_sigkill_of_the_owner_keeps_the_conversation(
    client: ShardClient, shard_cluster: ShardCluster
) -> None:
    session = "conv-survivor"
    for i in range(4):
        turn(client, session, f"q{i}")
    owner = client.route(session).shard.id
    shard_cluster.kill(owner)
    try:
        last = turn(client, session, "after the crash")
    except OutcomeUnknown:
        # The client's connection to the dead shard may still look open: the call then
        # breaks on it ("socket closed") and, not being idempotent, is not retried by
        # the client. An application retries the turn, as here; the history below shows
        # it was not applied twice.
        last = turn(client, session, "after the crash")
    assert last.shard_id != owner
    assert last.turns_held == 5
    assert history(client, session) == [f"q{i}" for i in range(4)] + ["after the crash"]


def test_stale_client_follows_one_redirect(client: ShardClient, etcd_server: EtcdServer) -> None:
    session = "conv-redirected"
    turn(client, session, "one")
    with ShardClient.connect(etcd_server.endpoint, "chat", timeout=10) as stale:
        stale.source.wait_for(lambda t: len(t) == 3, 10)
        source = stale.route(session).shard.id
        target = next(s for s in client.source.current().shards if s != source)
        client.migrate(session, target=target)
        reply = turn(stale, session, "two")  # the stale client still routes to the source
        assert reply.shard_id == target and reply.turns_held == 2
        assert stale.stats.snapshot().get("redirects") == 1
        assert stale.router.pinned(session) == target
        assert turn(stale, session, "three").shard_id == target
        assert stale.stats.snapshot().get("redirects") == 1  # converged: no second one


def test_etcd_down_migration_fails_cleanly_and_routing_goes_on(
    client: ShardClient, etcd_server: EtcdServer
) -> None:
    session = "conv-offline"
    turn(client, session, "hi")
    home = client.route(session).shard.id
    etcd_server.kill()
    with pytest.raises(EtcdUnavailable):
        client.migrate(session)
    assert client.route(session).shard.id == home  # routing on the last snapshot
    assert history(client, session) == ["hi"]  # and calls still reach the shard


def test_failed_move_rolls_back_and_the_session_is_not_stuck(
    client: ShardClient, etcd_server: EtcdServer
) -> None:
    from shardroute.discovery.keys import KeySchema
    from shardroute.errors import MigrationFailed
    from shardroute.etcd import EtcdClient, EtcdOptions
    from shardroute.testing.etcd import free_port

    session = "conv-rollback"
    turn(client, session, "one")
    etcd = EtcdClient(EtcdOptions((etcd_server.endpoint,)))
    try:  # a shard that is registered but cannot be reached: the import will fail
        etcd.put(
            KeySchema("chat").shard("ghost"), f'{{"address": "127.0.0.1:{free_port()}"}}'.encode()
        )
        client.source.wait_for(lambda t: "ghost" in t.shards, 10)
        with pytest.raises(MigrationFailed, match="rolled back"):
            client.migrate(session, target="ghost")
        client.router.forget(session)
        last = turn(client, session, "two")  # the source serves again (unfrozen)
        assert last.turns_held == 2 and last.shard_id != "ghost"
        real = next(s for s in client.source.current().shards if s not in (last.shard_id, "ghost"))
        assert client.migrate(session, target=real).target == real  # no stale fence left
        assert history(client, session) == ["one", "two"]
    finally:
        etcd.delete(KeySchema("chat").shard("ghost"))
        etcd.close()


def test_migrate_many_starts_nothing_after_its_deadline(client: ShardClient) -> None:
    import time

    from shardroute.discovery.etcd import EtcdTopologySource
    from shardroute.errors import MigrationFailed
    from shardroute.etcd import EtcdClient
    from shardroute.sessions.migrator import Migrator

    turn(client, session := "conv-late", "hi")
    source = client.source
    assert isinstance(source, EtcdTopologySource)
    with Migrator(EtcdClient(source.options), "chat", source, close_etcd=True) as mover:
        results, errors = mover.migrate_many([session], deadline=time.monotonic() - 1)
    assert results == [] and isinstance(errors[session], MigrationFailed)
    assert history(client, session) == ["hi"]


def test_async_client_migrates_and_follows(client: ShardClient, etcd_server: EtcdServer) -> None:
    import asyncio

    from shardroute.aio import AsyncShardClient

    session = "conv-async-move"
    turn(client, session, "one")
    source = client.route(session).shard.id
    target = next(s for s in client.source.current().shards if s != source)

    async def move() -> tuple[str, str]:
        async with await AsyncShardClient.connect(etcd_server.endpoint, "chat", timeout=10) as aio:
            await asyncio.to_thread(aio.source.wait_for, lambda t: len(t) == 3, 10)
            result = await aio.migrate(session, target=target)
            chat = aio.stub(chat_pb2_grpc.ChatStub)
            request = chat_pb2.GenerateRequest(prompt="two", max_tokens=3)
            tokens = [t async for t in chat.Generate(request, session_key=session, timeout=15)]
            return result.target, tokens[-1].shard_id

    assert asyncio.run(move()) == (target, target)  # moved, and this client follows it
    assert history(client, session) == ["one", "two"]


def test_a_move_told_who_holds_the_session_reads_no_state_for_its_owner(
    client: ShardClient,
) -> None:
    from shardroute.discovery.etcd import EtcdTopologySource
    from shardroute.etcd import EtcdClient
    from shardroute.sessions import EtcdSessionStore
    from shardroute.sessions.migrator import Migrator
    from shardroute.sessions.store import StoredState

    class CountingStore(EtcdSessionStore):
        loads = 0

        def load(self, session_key: str) -> StoredState | None:
            CountingStore.loads += 1
            return super().load(session_key)

    source = client.source
    assert isinstance(source, EtcdTopologySource)
    etcd = EtcdClient(source.options)
    with Migrator(etcd, "chat", source, store=CountingStore(etcd, "chat")) as mover:
        for key, told in (("conv-told", True), ("conv-not-told", False)):
            owner = turn(client, key, "hi").shard_id  # at its ring home: no override
            CountingStore.loads = 0
            moved = mover.migrate(key, held_by=owner if told else None)
            assert moved.source == owner and not moved.from_store
            # a drain names itself: no read of the (maybe large) state just for its owner
            assert CountingStore.loads == (0 if told else 1)
            served = turn(client, key, "again").shard_id
            # The target, or (seen once in CI, under load) a shard the client failed over
            # to, which took the session over: then its override names it. Never the
            # source serving a copy the move left behind (the override naming another).
            now = mover.overrides.get(key)
            assert served == moved.target or (now is not None and now.owner == served), (
                f"{key}: served by {served}; moved {moved.source} -> {moved.target}; "
                f"override now {now}"
            )
            assert history(client, key) == ["hi", "again"]
    etcd.close()
