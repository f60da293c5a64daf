"""Issue 15 on real shards with the Redis session store: state lives in Redis, etcd holds
none; a drain, a move, SIGKILLed shards and scale-ups keep every history whole; Redis
killed and restarted mid-traffic gives clear errors and loses no answered turn; sessions
end and expire with their state; a bad store URL is a ConfigError."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chat_calls import history, turn

from shardroute.client import ShardClient
from shardroute.discovery.keys import KeySchema
from shardroute.errors import (
    CallFailed,
    ConfigError,
    NoShardAvailable,
    OutcomeUnknown,
    ShardRouteError,
    ShardUnavailable,
)
from shardroute.etcd import EtcdClient
from shardroute.server import ShardServer
from shardroute.sessions import Migrator, RedisSessionStore
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.redis import RedisServer
from shardroute.testing.waiting import wait_until

KEYS = KeySchema("chat")


@pytest.fixture
def session_ttl_s() -> float | None:
    return None


@pytest.fixture
def shard_kwargs(redis_server: RedisServer, session_ttl_s: float | None) -> dict[str, Any]:
    # fold every 3 turns: histories here are snapshots plus short logs
    kwargs: dict[str, Any] = {"session_store": redis_server.url, "session_fold": {"max_turns": 3}}
    if session_ttl_s is not None:
        kwargs["session_ttl_s"] = session_ttl_s
    return kwargs


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisSessionStore]:
    """The shards' store, read from the test (what is really in Redis)."""
    made = RedisSessionStore(redis_server.url, "chat")
    yield made
    made.close()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdClient]:
    client = etcd_server.client()
    yield client
    client.close()


def move(cluster: ShardCluster, store: RedisSessionStore, session: str, target: str) -> Any:
    """Move a session with a mover that reads the shards' store (docs/migration.md)."""
    etcd = EtcdClient(cluster.source.options)
    with Migrator(etcd, "chat", cluster.source, store=store, close_etcd=True) as mover:
        return mover.migrate(session, target=target)


def retrying_turn(client: ShardClient, session: str, prompt: str) -> Any:
    """A turn an application retries while a shard or the store is going away."""
    for _ in range(100):
        try:
            return turn(client, session, prompt)
        except ShardRouteError:
            time.sleep(0.05)
    raise AssertionError(f"{session}: {prompt} failed 100 times")


def test_state_lives_in_redis_etcd_holds_none_and_end_removes_it(
    shard_client: ShardClient,
    shard_cluster: ShardCluster,
    store: RedisSessionStore,
    etcd: EtcdClient,
    etcd_server: EtcdServer,
    redis_server: RedisServer,
) -> None:
    for i in range(5):
        turn(shard_client, "conv-r", f"q{i}")
    stored = store.load("conv-r")
    assert stored is not None and b"q4" in stored.data
    assert stored.owner == shard_client.route("conv-r").shard.id
    _rev, state = etcd.range_prefix(f"{KEYS.prefix}state/")
    assert state == []
    # `shardroute migrate --session-store` moves it (no override: the owner is read from
    # Redis), and refuses a password on the command line
    target = next(s for s in shard_cluster.shard_ids if s != stored.owner)
    base = [sys.executable, "-m", "shardroute.cli", "migrate", "--etcd", etcd_server.endpoint]
    base += ["--service", "chat", "--session", "conv-r", "--session-store"]
    moved = subprocess.run(
        [*base, redis_server.url, "--to", target], capture_output=True, text=True, timeout=60
    )
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["to"] == target
    with_password = f"redis://:pw@{redis_server.endpoint}/0"
    refused = subprocess.run([*base, with_password], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "password" in refused.stderr
    assert "pw@" not in refused.stderr
    assert turn(shard_client, "conv-r", "moved").shard_id == target
    # the session ends: its Redis state goes, the next turn starts a new one
    assert shard_client.end_session("conv-r") is True
    assert store.load("conv-r") is None
    assert etcd.get(KEYS.session("conv-r")) is None
    assert turn(shard_client, "conv-r", "again").turn == 1


def test_drain_move_kill_and_scale_up_keep_histories_whole(
    shard_client: ShardClient,
    shard_cluster: ShardCluster,
    store: RedisSessionStore,
    redis_server: RedisServer,
) -> None:
    redis_url = redis_server.url
    sessions = [f"conv-{i}" for i in range(12)]
    said: dict[str, list[str]] = {s: [] for s in sessions}

    def talk(rounds: int) -> None:
        for _ in range(rounds):
            for s in sessions:
                prompt = f"{s}:{len(said[s])}"
                retrying_turn(shard_client, s, prompt)
                said[s].append(prompt)

    talk(4)
    # a move by a client that knows the shards' store (the session has no override:
    # the mover reads its owner from the store)
    moved = sessions[0]
    source = shard_client.route(moved).shard.id
    target = next(s for s in shard_cluster.shard_ids if s != source)
    address = shard_cluster.source.options.endpoints
    with ShardClient.connect(address, "chat", session_store=redis_url) as mover:
        result = mover.migrate(moved, target=target)
    assert (result.source, result.target) == (source, target)
    talk(2)
    # a drain moves every session it holds; a SIGKILL leaves them in Redis; scale up
    drained = shard_cluster.shard_ids[1]
    assert shard_cluster.drain(drained) == 0
    talk(2)
    shard_cluster.kill(shard_cluster.shard_ids[0])
    shard_cluster.add()
    shard_cluster.add()
    talk(3)
    for s in sessions:
        assert history(shard_client, s) == said[s], s
        stored = store.load(s)
        assert stored is not None and all(p.encode() in stored.data for p in said[s])


def test_redis_killed_and_restarted_mid_traffic(
    shard_client: ShardClient, redis_server: RedisServer
) -> None:
    sessions = [f"conv-outage-{i}" for i in range(4)]
    answered: dict[str, list[str]] = {s: [] for s in sessions}
    errors: list[ShardRouteError] = []
    stop = threading.Event()

    def talk(session: str) -> None:
        i = 0
        while not stop.is_set():
            prompt = f"{session}:{i}"
            try:
                turn(shard_client, session, prompt)
            except ShardRouteError as exc:
                errors.append(exc)
                time.sleep(0.05)
                continue  # the application retries the same prompt
            answered[session].append(prompt)
            i += 1

    threads = [threading.Thread(target=talk, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: min(len(a) for a in answered.values()) >= 3, 30, "turns")
        redis_server.kill()
        wait_until(lambda: len(errors) >= 4, 30, "turns refused while Redis is down")
        redis_server.start()  # same port, same append-only file
        done = {s: len(a) for s, a in answered.items()}
        wait_until(lambda: all(len(answered[s]) >= done[s] + 3 for s in sessions), 60, "recovery")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    # The shard's own answer, "session store unreachable" (refused before it ran and
    # retried until the deadline, or the checkpoint failed after the reply began), or an
    # outcome unknown; nothing else.
    allowed = {ShardUnavailable, NoShardAvailable, OutcomeUnknown}
    for error in errors:
        if isinstance(error, CallFailed):
            assert error.code is grpc.StatusCode.UNAVAILABLE, error
            assert "session store unreachable" in error.details, error
        else:
            assert type(error) in allowed, error
    for s in sessions:
        got = history(shard_client, s)
        # every answered turn is there, in order; a turn whose outcome was unknown may
        # appear once more (the application retried it)
        deduped = [p for k, p in enumerate(got) if k == 0 or got[k - 1] != p]
        assert deduped == answered[s], s


@pytest.mark.parametrize("session_ttl_s", [2.0])
def test_ttl_removes_the_redis_state_and_override(
    shard_client: ShardClient,
    shard_cluster: ShardCluster,
    store: RedisSessionStore,
    etcd: EtcdClient,
) -> None:
    session = "conv-idle"
    turn(shard_client, session, "hello")
    source = shard_client.route(session).shard.id
    move(shard_cluster, store, session, next(s for s in shard_cluster.shard_ids if s != source))
    assert etcd.get(KEYS.session(session)) is not None  # moved: the session has an override
    started = time.monotonic()
    wait_until(
        lambda: store.load(session) is None and etcd.get(KEYS.session(session)) is None,
        15,
        "the idle session's state and override to expire",
    )
    assert time.monotonic() - started >= 1.5
    assert turn(shard_client, session, "back").turn == 1


def test_a_bad_store_url_is_a_config_error() -> None:
    for bad in ("redis://h:port", "mysql://h", "rediss+cluster://a:1/3", "somewhere"):
        with pytest.raises(ConfigError):
            ShardServer(shard_id="s1", service="chat", etcd=None, session_store=bad)
