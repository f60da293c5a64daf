"""The turn log of the session stores (issue 9): checkpoints write what a turn added,
folds write snapshots, every write stays a compare-and-swap, sessions end and expire.

Each body runs in memory and against a real etcd, Redis and Redis Cluster
(tests/integration/stores.py).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from concurrency import race
from stores import KINDS, StoreFactory, store_factory

from shardroute.errors import MalformedRecord, StaleState
from shardroute.etcd import EtcdClient
from shardroute.sessions import (
    EtcdSessionStore,
    FoldPolicy,
    SessionStore,
    StoredState,
)
from shardroute.sessions._redis_client import connect
from shardroute.sessions.envelope import encode_record
from shardroute.sessions.redis_store import RedisSessionStore
from shardroute.testing.redis import RedisServer

pytest_plugins = ["store_fixtures"]  # shared_etcd, shared_redis, service

NO_FOLD = FoldPolicy(max_turns=10_000, max_log_bytes=2**30, log_ratio=1e9, record_share=1.0)


@pytest.fixture(params=KINDS)
def make_store(request: pytest.FixtureRequest, service: str) -> StoreFactory:
    return store_factory(request, request.param, service)


def history(turns: int, turn_bytes: int = 1024) -> bytes:
    """A conversation as the chat codec encodes it: a JSON list of turns."""
    return json.dumps([["p" * 10, "r" * (turn_bytes - 20)] for _ in range(turns)]).encode()


def converse(store: SessionStore, key: str, turns: int) -> tuple[StoredState, list[int]]:
    """``turns`` checkpoints of a growing conversation; bytes written by each."""
    state: StoredState | None = None
    written = []
    for n in range(1, turns + 1):
        before = store.bytes_written
        state = store.checkpoint(key, history(n), owner="a", previous=state)
        written.append(store.bytes_written - before)
    assert state is not None
    return state, written


def test_checkpoint_writes_what_the_turn_added(make_store: StoreFactory) -> None:
    store = make_store(fold=NO_FOLD)
    state, written = converse(store, "s", 200)
    loaded = store.load("s")
    assert loaded == StoredState(history(200), state.version, "a")
    assert loaded is not None and loaded.log.turns == 199
    # Turn 200 writes about what turn 2 wrote (one 1 KiB turn), not 200 KiB.
    assert written[199] < 2 * written[1] < 4 * 1024
    assert sum(written) < 200 * 2 * 1024  # O(n), not O(n^2) (~20 MB)


def test_default_policy_folds_and_keeps_reads_bounded(make_store: StoreFactory) -> None:
    store = make_store(fold=FoldPolicy(max_turns=8))
    state, written = converse(store, "s", 30)
    assert state.log.turns <= 8
    folds = [n for n, size in enumerate(written, 1) if size > 3 * 1024]
    assert folds, "no snapshot written in 30 turns with max_turns=8"
    loaded = store.load("s")
    assert loaded == StoredState(history(30), state.version, "a")
    assert loaded is not None and loaded.log.turns == state.log.turns


@pytest.mark.parametrize("fold", [NO_FOLD, FoldPolicy(max_turns=0)], ids=["append", "fold"])
def test_two_writers_from_one_state_exactly_one_wins(
    make_store: StoreFactory, fold: FoldPolicy
) -> None:
    store = make_store(fold=fold)
    state, _ = converse(store, "hot", 3)
    for round_ in range(4):

        def write(i: int, base: StoredState = state, r: int = round_) -> StoredState:
            data = base.data[:-1] + f',["round {r}","writer {i}"]]'.encode()
            return store.checkpoint("hot", data, owner=f"w{i}", previous=base)

        wins, stale = race(6, write)
        assert len(wins) == 1 and len(stale) == 5, (wins, stale)
        state = wins[0]
        assert store.load("hot") == state


def test_a_stale_writer_loses_after_a_fold_or_a_delete(make_store: StoreFactory) -> None:
    store = make_store(fold=NO_FOLD)
    old, _ = converse(store, "s", 3)
    newer = store.checkpoint("s", history(4), owner="b", previous=old)
    store.save("s", history(4) + b" ", owner="b", expected_version=newer.version)  # a fold
    for previous in (old, newer):
        with pytest.raises(StaleState):
            store.checkpoint("s", history(5), owner="a", previous=previous)
    current = store.load("s")
    assert current is not None and current.data == history(4) + b" "
    assert store.delete("s") is True
    with pytest.raises(StaleState):
        store.checkpoint("s", history(5), owner="a", previous=current)
    assert store.load("s") is None
    assert store.delete("s") is False
    fresh = store.checkpoint("s", history(1), owner="a", previous=None)
    assert store.load("s") == fresh


def test_delete_with_version_removes_snapshot_and_log(make_store: StoreFactory) -> None:
    store = make_store(fold=NO_FOLD)
    state, _ = converse(store, "s", 5)
    with pytest.raises(StaleState):
        store.delete("s", expected_version=state.version - 1)
    assert store.load("s") == state
    assert store.delete("s", expected_version=state.version) is True
    assert store.load("s") is None


def test_idle_sessions_expire_whole(make_store: StoreFactory) -> None:
    store = make_store(fold=NO_FOLD, ttl_s=1.0)
    keep, _ = converse(store, "kept", 2)
    idle, _ = converse(store, "idle", 3)
    deadline = time.monotonic() + 6
    while store.load("idle") is not None:  # etcd: 1 to 1.5 s after the last write; Redis: 1 s
        # a live session's writes keep it alive meanwhile
        keep = store.checkpoint("kept", keep.data + b" ", owner="a", previous=keep)
        assert time.monotonic() < deadline, "the idle session never expired"
        time.sleep(0.2)
    assert store.load("kept") == keep
    with pytest.raises(StaleState):  # nothing of the expired session is left to extend
        store.checkpoint("idle", history(4), owner="a", previous=idle)
    fresh = store.checkpoint("idle", history(1), owner="a", previous=None)  # starts anew
    assert store.load("idle") == fresh


# -- etcd only ------------------------------------------------------------------------------


def etcd_store(shared_etcd: EtcdClient, **kwargs: object) -> EtcdSessionStore:
    return EtcdSessionStore(shared_etcd, f"t{uuid.uuid4().hex[:10]}", **kwargs)  # type: ignore[arg-type]


def test_etcd_layout_snapshot_and_records(shared_etcd: EtcdClient) -> None:
    store = etcd_store(shared_etcd, fold=NO_FOLD)
    state, _ = converse(store, "s", 4)
    _rev, items = shared_etcd.range_prefix(store.key("s"))
    keys = [key for key, _value, _mod in items]
    assert keys[0] == store.key("s")
    assert len(keys) == 4 and all(k.startswith(store.key("s") + "/") for k in keys[1:])
    assert max(mod for _k, _v, mod in items) == state.version == store.version("s")
    # a session whose key extends this one's is not mixed in
    other, _ = converse(store, "s-2", 2)
    assert store.load("s") == state and store.load("s-2") == other


def test_etcd_corrupt_or_missing_record_is_malformed(shared_etcd: EtcdClient) -> None:
    store = etcd_store(shared_etcd, fold=NO_FOLD)
    converse(store, "s", 4)
    _rev, items = shared_etcd.range_prefix(store.key("s") + "/")
    middle = items[1][0]
    shared_etcd.delete(middle)
    with pytest.raises(MalformedRecord) as info:
        store.load("s")
    assert info.value.key.startswith(store.key("s") + "/")
    shared_etcd.put(middle, encode_record(b"x", b"xyz", owner="evil"))
    with pytest.raises(MalformedRecord):
        store.load("s")


def test_etcd_records_without_snapshot_are_malformed(shared_etcd: EtcdClient) -> None:
    store = etcd_store(shared_etcd, fold=NO_FOLD)
    converse(store, "s", 2)
    shared_etcd.delete(store.key("s"))
    with pytest.raises(MalformedRecord, match="without a snapshot"):
        store.load("s")


def test_etcd_expiry_is_one_lease_per_session(shared_etcd: EtcdClient) -> None:
    store = etcd_store(shared_etcd, fold=NO_FOLD, ttl_s=30.0)
    state, _ = converse(store, "s", 3)
    assert state.log.lease > 0
    shared_etcd.revoke_lease(state.log.lease)  # what expiry does, without the wait
    _rev, items = shared_etcd.range_prefix(store.key("s"))
    assert items == []
    assert store.load("s") is None


# -- Redis only -----------------------------------------------------------------------------


def redis_store(shared_redis: RedisServer, **kwargs: object) -> RedisSessionStore:
    return RedisSessionStore(shared_redis.url, f"t{uuid.uuid4().hex[:10]}", **kwargs)  # type: ignore[arg-type]


def test_redis_layout_snapshot_and_records_in_one_hash(shared_redis: RedisServer) -> None:
    store = redis_store(shared_redis, fold=NO_FOLD)
    state, _ = converse(store, "s", 4)
    client = connect(store.options)
    names = sorted(name.decode() for name in client.hkeys(store.key("s")))
    assert names[:3] == [f"r{n:020d}" for n in sorted(int(x[1:]) for x in names[:3])]
    assert names[3:] == ["s", "v"] and len(names) == 5
    assert int(client.hget(store.key("s"), "v")) == state.version == store.version("s")
    other, _ = converse(store, "s-2", 2)
    assert store.load("s") == state and store.load("s-2") == other
    client.close()


def test_redis_corrupt_or_missing_record_is_malformed(shared_redis: RedisServer) -> None:
    store = redis_store(shared_redis, fold=NO_FOLD)
    converse(store, "s", 4)
    client = connect(store.options)
    middle = sorted(n for n in client.hkeys(store.key("s")) if n.startswith(b"r"))[1]
    client.hdel(store.key("s"), middle)
    with pytest.raises(MalformedRecord) as info:
        store.load("s")
    assert info.value.key.startswith(store.key("s") + "#r")
    client.hset(store.key("s"), middle, encode_record(b"x", b"xyz", owner="evil"))
    with pytest.raises(MalformedRecord):
        store.load("s")
    client.hdel(store.key("s"), "s")
    with pytest.raises(MalformedRecord, match="without a snapshot"):
        store.load("s")
    client.close()


def test_redis_expiry_is_the_key_ttl_set_by_every_write(shared_redis: RedisServer) -> None:
    store = redis_store(shared_redis, fold=NO_FOLD, ttl_s=30.0)
    converse(store, "s", 3)
    client = connect(store.options)
    assert 29_000 < client.pttl(store.key("s")) <= 30_000
    client.pexpireat(store.key("s"), 1)  # a time past: what expiry does, without the wait
    assert store.load("s") is None
    client.close()
