"""Issue 9 on real shards: sessions end (end_session, TTL) with their state and override,
and a snapshot plus an unfolded turn log survives migration, take-over and SIGKILLs."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chat_calls import history, turn

from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.keys import KeySchema
from shardroute.errors import ShardRouteError
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.waiting import wait_until

KEYS = KeySchema("chat")


@pytest.fixture
def shard_kwargs() -> dict[str, Any]:
    # a long log: these tests move and take over sessions whose turns are all records
    return {
        "session_fold": {
            "max_turns": 1000,
            "max_log_bytes": 1 << 20,
            "log_ratio": 1e9,
            "record_share": 1.0,
        }
    }


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdClient]:
    client = EtcdClient(EtcdOptions((etcd_server.endpoint,)))
    yield client
    client.close()


def stored_keys(etcd: EtcdClient, session: str) -> list[str]:
    """Every etcd key of the session: its state (snapshot, records) and its override."""
    _rev, state = etcd.range_prefix(KEYS.state(session))
    mine = [
        k
        for k, _v, _m in state
        if k == KEYS.state(session) or k.startswith(f"{KEYS.state(session)}/")
    ]
    return mine + ([KEYS.session(session)] if etcd.get(KEYS.session(session)) else [])


def test_end_session_removes_state_and_override(
    shard_client: ShardClient, etcd: EtcdClient
) -> None:
    session = "conv-ending"
    for i in range(3):
        turn(shard_client, session, f"p{i}")
    target = next(
        s for s in shard_client.source.current().shards if s != shard_client.route(session).shard.id
    )
    shard_client.migrate(session, target=target)  # an override now says where it lives
    assert KEYS.session(session) in stored_keys(etcd, session)
    assert len(stored_keys(etcd, session)) > 2  # snapshot + records + override

    assert shard_client.end_session(session) is True
    assert stored_keys(etcd, session) == []
    assert shard_client.end_session(session) is False  # idempotent
    again = turn(shard_client, session, "new start")
    assert again.turn == 1  # the caller can tell: a new session
    assert history(shard_client, session) == ["new start"]


def test_end_session_from_the_asyncio_client(
    shard_client: ShardClient, etcd: EtcdClient, etcd_server: EtcdServer
) -> None:
    session = "conv-async-end"
    turn(shard_client, session, "hello")

    async def end() -> tuple[bool, bool]:
        async with await AsyncShardClient.connect(etcd_server.endpoint, "chat", timeout=10) as aio:
            await asyncio.to_thread(aio.source.wait_for, lambda t: len(t) == 3, 10)
            return await aio.end_session(session), await aio.end_session(session)

    assert asyncio.run(end()) == (True, False)
    assert stored_keys(etcd, session) == []


def test_end_session_needs_a_key(shard_client: ShardClient) -> None:
    from shardroute.errors import ConfigError

    with pytest.raises(ConfigError):
        shard_client.end_session("")


def test_take_over_of_an_unfolded_log_after_sigkill(
    shard_client: ShardClient, shard_cluster: ShardCluster, etcd: EtcdClient
) -> None:
    session = "conv-log-survivor"
    prompts = [f"q{i}" for i in range(12)]
    for p in prompts:
        turn(shard_client, session, p)
    assert len(stored_keys(etcd, session)) == 12  # a snapshot and 11 turn records
    owner = shard_client.route(session).shard.id
    shard_cluster.kill(owner)
    try:
        last = turn(shard_client, session, "after")
    except ShardRouteError:  # the dead connection may break one call; the app retries
        last = turn(shard_client, session, "after")
    assert last.shard_id != owner and last.turns_held == 13
    assert history(shard_client, session) == [*prompts, "after"]


def test_migration_of_an_unfolded_log(shard_client: ShardClient, etcd: EtcdClient) -> None:
    session = "conv-log-moved"
    prompts = [f"m{i}" for i in range(8)]
    for p in prompts:
        turn(shard_client, session, p)
    assert len(stored_keys(etcd, session)) == 8
    source = shard_client.route(session).shard.id
    target = next(s for s in shard_client.source.current().shards if s != source)
    shard_client.migrate(session, target=target)
    reply = turn(shard_client, session, "moved")
    assert (reply.shard_id, reply.turns_held) == (target, 9)
    assert history(shard_client, session) == [*prompts, "moved"]


@pytest.mark.parametrize(
    "shard_kwargs",
    [{"session_ttl_s": 2.0, "session_fold": {"max_turns": 1000, "log_ratio": 1e9}}],
)
def test_idle_sessions_expire_with_their_override(
    shard_client: ShardClient, etcd: EtcdClient
) -> None:
    session, live = "conv-idle", "conv-live"
    turn(shard_client, session, "hello")
    turn(shard_client, session, "again")
    target = next(
        s for s in shard_client.source.current().shards if s != shard_client.route(session).shard.id
    )
    shard_client.migrate(session, target=target)
    assert KEYS.session(session) in stored_keys(etcd, session)
    started = time.monotonic()

    def gone() -> bool:
        turn(shard_client, live, "keep talking")  # a live session is not expired
        return stored_keys(etcd, session) == []

    wait_until(gone, 15, "the idle session's state and override to expire")
    assert time.monotonic() - started >= 2.0
    assert len(history(shard_client, live)) >= 2
    fresh = turn(shard_client, session, "back")
    assert fresh.turn == 1
    assert history(shard_client, session) == ["back"]


@pytest.mark.parametrize("shard_kwargs", [{"session_fold": {"max_turns": 3}}])
def test_folds_under_concurrent_turns_and_sigkills_lose_nothing(
    shard_client: ShardClient, shard_cluster: ShardCluster
) -> None:
    sessions = [f"conv-fold-{i}" for i in range(6)]
    answered: dict[str, list[str]] = {s: [] for s in sessions}
    stop = threading.Event()
    failures: list[BaseException] = []

    def talk(session: str) -> None:
        i = 0
        while not stop.is_set():
            prompt = f"{session}:{i}"
            for _attempt in range(20):  # an application retries a failed turn
                try:
                    reply = turn(shard_client, session, prompt)
                    break
                except ShardRouteError:
                    # A retry after an unknown outcome may find the turn applied already:
                    # the reply is then the next turn's; the history below decides.
                    time.sleep(0.05)
            else:
                failures.append(RuntimeError(f"{prompt} failed 20 times"))
                return
            answered[session].append(prompt)
            assert reply.turns_held >= len(answered[session])
            i += 1

    threads = [threading.Thread(target=talk, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    rng = random.Random(9)
    try:
        for _ in range(2):
            wait_until(
                lambda: min(len(a) for a in answered.values()) >= 5 or bool(failures), 30, "turns"
            )
            for a in answered.values():
                a_len = len(a)
                wait_until(lambda a=a, n=a_len: len(a) > n or bool(failures), 30, "progress")
            victim = rng.choice(shard_cluster.shard_ids)
            shard_cluster.kill(victim)
            shard_cluster.add()
        wait_until(
            lambda: min(len(a) for a in answered.values()) >= 20 or bool(failures), 60, "turns"
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    for session in sessions:
        got = history(shard_client, session)
        # every answered turn is there, in order; an unanswered retry may appear once more
        deduped = [p for k, p in enumerate(got) if k == 0 or got[k - 1] != p]
        assert deduped == answered[session], session
