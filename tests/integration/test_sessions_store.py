"""The session store contract (docs/migration.md): in memory, and against a real etcd,
Redis and Redis Cluster.

Most tests run one body against every store (tests/integration/stores.py). They share
one server per module (each test in its own service prefix) to stay fast; the outage
tests start their own server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from concurrency import race
from stores import KINDS, RawVersion, raw_reader, store_factory

from shardroute.discovery.keys import KeySchema
from shardroute.errors import (
    EtcdUnavailable,
    MalformedRecord,
    SessionStoreUnavailable,
    StaleState,
    StateTooLarge,
)
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.sessions import (
    EtcdSessionStore,
    SessionStore,
    StoredState,
    encode_envelope,
)
from shardroute.sessions._redis_client import connect
from shardroute.sessions.redis_store import RedisSessionStore
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.redis import RedisServer

pytest_plugins = ["store_fixtures"]  # shared_etcd, shared_redis, service

MIB = 1024 * 1024


@pytest.fixture(params=KINDS)
def store_and_raw(request: pytest.FixtureRequest, service: str) -> tuple[SessionStore, RawVersion]:
    store = store_factory(request, request.param, service)()
    return store, raw_reader(request, request.param, store)


@pytest.fixture
def store(store_and_raw: tuple[SessionStore, RawVersion]) -> SessionStore:
    return store_and_raw[0]


@pytest.fixture
def raw_version(store_and_raw: tuple[SessionStore, RawVersion]) -> RawVersion:
    return store_and_raw[1]


def test_both_stores_implement_the_protocol(store: SessionStore) -> None:
    assert isinstance(store, SessionStore)
    assert store.max_bytes == MIB


@pytest.mark.parametrize("data", [b"", b"\0\xff\x00binary\n" + bytes(range(256))])
def test_save_load_round_trip(store: SessionStore, data: bytes) -> None:
    assert store.load("s") is None
    version = store.save("s", data, owner="shard-a", expected_version=0)
    assert version > 0
    assert store.load("s") == StoredState(data, version, "shard-a")


def test_compare_and_swap_chain(store: SessionStore) -> None:
    v1 = store.save("s", b"one", owner="a", expected_version=0)
    v2 = store.save("s", b"two", owner="b", expected_version=v1)
    assert v2 > v1
    assert store.load("s") == StoredState(b"two", v2, "b")


@pytest.mark.parametrize(
    "expected",
    [
        pytest.param(lambda v1, v2: v1, id="stale"),
        pytest.param(lambda v1, v2: v2 + 1000, id="wrong"),
        pytest.param(lambda v1, v2: 0, id="create-when-exists"),
    ],
)
def test_mismatch_raises_stale_state_and_writes_nothing(
    store: SessionStore, raw_version: RawVersion, expected: Callable[[int, int], int]
) -> None:
    v1 = store.save("s", b"one", owner="a", expected_version=0)
    v2 = store.save("s", b"two", owner="a", expected_version=v1)
    with pytest.raises(StaleState) as info:
        store.save("s", b"lost", owner="b", expected_version=expected(v1, v2))
    assert info.value.session_key == "s"
    assert raw_version("s") == v2
    assert store.load("s") == StoredState(b"two", v2, "a")


def test_update_of_a_missing_session_is_stale(store: SessionStore, raw_version: RawVersion) -> None:
    with pytest.raises(StaleState):
        store.save("ghost", b"x", owner="a", expected_version=5)
    assert raw_version("ghost") is None


def test_exactly_max_bytes_fits_one_more_is_refused_unwritten(
    store: SessionStore, raw_version: RawVersion
) -> None:
    limit = store.max_bytes
    version = store.save("big", b"\x01" * limit, owner="a", expected_version=0)
    loaded = store.load("big")
    assert loaded is not None and loaded.data == b"\x01" * limit
    with pytest.raises(StateTooLarge) as info:
        store.save("big", b"\x02" * (limit + 1), owner="a", expected_version=version)
    assert (info.value.session_key, info.value.size, info.value.limit) == (
        "big",
        limit + 1,
        limit,
    )
    assert raw_version("big") == version
    with pytest.raises(StateTooLarge):
        store.save("new", b"\x02" * (limit + 1), owner="a", expected_version=0)
    assert raw_version("new") is None


def test_too_large_is_checked_before_the_version(store: SessionStore) -> None:
    with pytest.raises(StateTooLarge):
        store.save("s", b"x" * (store.max_bytes + 1), owner="a", expected_version=12345)


def test_delete_without_version_is_idempotent(store: SessionStore) -> None:
    store.delete("nothing")
    store.save("s", b"x", owner="a", expected_version=0)
    store.delete("s")
    assert store.load("s") is None
    store.delete("s")


def test_delete_with_version_is_compare_and_swap(
    store: SessionStore, raw_version: RawVersion
) -> None:
    v1 = store.save("s", b"x", owner="a", expected_version=0)
    v2 = store.save("s", b"y", owner="a", expected_version=v1)
    with pytest.raises(StaleState):
        store.delete("s", expected_version=v1)
    with pytest.raises(StaleState):
        store.delete("s", expected_version=0)
    assert raw_version("s") == v2
    store.delete("s", expected_version=v2)
    assert raw_version("s") is None
    store.delete("s", expected_version=0)  # "must not exist": holds, nothing to do
    with pytest.raises(StaleState):
        store.delete("s", expected_version=v2)
    # after a delete the session starts again from "must not exist"
    assert store.save("s", b"z", owner="b", expected_version=0) > v2


def test_concurrent_savers_exactly_one_wins_per_version(store: SessionStore) -> None:
    writers = 8
    version = store.save("hot", b"start", owner="w", expected_version=0)
    for round_ in range(5):

        def save(i: int, expected: int = version, r: int = round_) -> tuple[int, bytes]:
            data = f"round {r} writer {i}".encode()
            return store.save("hot", data, owner=f"w{i}", expected_version=expected), data

        wins, stale = race(writers, save)
        assert len(wins) == 1, wins
        assert len(stale) == writers - 1
        version, data = wins[0]
        loaded = store.load("hot")
        assert loaded is not None and (loaded.version, loaded.data) == (version, data)


# -- etcd only ----------------------------------------------------------------------------


def test_value_layout_in_etcd(shared_etcd: EtcdClient, service: str) -> None:
    store = EtcdSessionStore(shared_etcd, service)
    version = store.save("s", b"hello", owner="a", expected_version=0)
    raw = shared_etcd.get_with_version(f"/shardroute/{service}/state/s")
    assert raw is not None and raw[1] == version
    assert raw[0].startswith(b"SRS1") and raw[0].endswith(b"hello")
    # outside the topology range
    start, end = KeySchema(service).topology_range
    assert not start <= store.key("s") < end


@pytest.mark.parametrize(
    "raw",
    [b"garbage", encode_envelope(b"hello", owner="a")[:-1], encode_envelope(b"hi", owner="a")[:6]],
    ids=["garbage", "truncated-state", "truncated-header"],  # stable ids: no timestamp
)
def test_corrupt_value_raises_malformed_record(
    shared_etcd: EtcdClient, service: str, raw: bytes
) -> None:
    store = EtcdSessionStore(shared_etcd, service)
    shared_etcd.put(store.key("s"), raw)
    with pytest.raises(MalformedRecord) as info:
        store.load("s")
    assert info.value.key == store.key("s")


def test_envelope_written_by_hand_is_read(shared_etcd: EtcdClient, service: str) -> None:
    store = EtcdSessionStore(shared_etcd, service)
    version = shared_etcd.put(store.key("s"), encode_envelope(b"ops", owner="manual", ts=0))
    assert store.load("s") == StoredState(b"ops", version, "manual")


def test_max_bytes_is_configurable(shared_etcd: EtcdClient, service: str) -> None:
    store = EtcdSessionStore(shared_etcd, service, max_bytes=10)
    store.save("s", b"0123456789", owner="a", expected_version=0)
    with pytest.raises(StateTooLarge):
        store.save("s", b"0123456789!", owner="a", expected_version=0)


def test_etcd_down_raises_etcd_unavailable_fast(etcd_server: EtcdServer) -> None:
    client = EtcdClient(EtcdOptions((etcd_server.endpoint,), timeout=1.0))
    try:
        store = EtcdSessionStore(client, "chat")
        version = store.save("s", b"x", owner="a", expected_version=0)
        etcd_server.kill()
        calls: list[Callable[[], object]] = [
            lambda: store.load("s"),
            lambda: store.save("s", b"y", owner="a", expected_version=version),
            lambda: store.delete("s", expected_version=version),
            lambda: store.delete("s"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                call()
            assert time.monotonic() - started < 3.0
    finally:
        client.close()


# -- Redis only ---------------------------------------------------------------------------


def test_value_layout_in_redis(shared_redis: RedisServer, service: str) -> None:
    store = RedisSessionStore(shared_redis.url, service)
    version = store.save("s", b"hello", owner="a", expected_version=0)
    key = f"/shardroute/{service}/state/{{s}}"
    assert store.key("s") == key
    assert shared_redis.command("HGET", key, "v") == str(version).encode()
    assert shared_redis.command("HGET", key, "s").endswith(b"hello")
    assert shared_redis.command("TTL", key) == b"-1"  # no ttl_s: never expires
    store.close()


@pytest.mark.parametrize(
    "raw",
    [b"garbage", encode_envelope(b"hello", owner="a")[:-1], encode_envelope(b"hi", owner="a")[:6]],
    ids=["garbage", "truncated-state", "truncated-header"],  # stable ids: no timestamp
)
def test_corrupt_redis_value_raises_malformed_record(
    shared_redis: RedisServer, service: str, raw: bytes
) -> None:
    store = RedisSessionStore(shared_redis.url, service)
    store.save("s", b"x", owner="a", expected_version=0)
    client = connect(store.options)
    client.hset(store.key("s"), "s", raw)
    with pytest.raises(MalformedRecord) as info:
        store.load("s")
    assert info.value.key == store.key("s") + "#s"
    client.close()
    store.close()


def test_redis_down_raises_session_store_unavailable_fast(redis_server: RedisServer) -> None:
    store = RedisSessionStore(f"{redis_server.url}?timeout=1", "chat")
    version = store.save("s", b"x", owner="a", expected_version=0)
    redis_server.kill()
    calls: list[Callable[[], object]] = [
        lambda: store.load("s"),
        lambda: store.save("s", b"y", owner="a", expected_version=version),
        lambda: store.checkpoint("s", b"xy", owner="a", previous=None),
        lambda: store.delete("s", expected_version=version),
        lambda: store.delete("s"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(SessionStoreUnavailable, match="unreachable") as info:
            call()
        assert redis_server.endpoint in str(info.value)
        assert time.monotonic() - started < 3.0
    redis_server.start()  # same port, same append-only file: the write is there
    loaded = store.load("s")
    assert loaded is not None and (loaded.data, loaded.version) == (b"x", version)
    store.close()


def test_redis_acl_user_and_password_never_shown() -> None:
    # the commands docs/operations.md ("Redis ACL") gives the shards' user
    allowed = "hget hgetall hset del exists pexpire evalsha eval script|load time ping"
    rights = tuple(f"+{command}" for command in (*allowed.split(), "client|setname"))
    acl = ("--user", "shard", "on", ">s3cret-pw", "~/shardroute/*", *rights)
    acl += ("--user", "narrow", "on", ">pw2", "~elsewhere/*", "+@all")
    with RedisServer(password="admin-pw", extra_args=acl) as server:
        store = RedisSessionStore(f"redis://shard:s3cret-pw@{server.endpoint}/0", "chat")
        assert "s3cret-pw" not in repr(store) and "s3cret-pw" not in repr(store.options)
        store.save("s", b"x", owner="a", expected_version=0)
        assert store.load("s") is not None
        wrong = RedisSessionStore(f"redis://shard:wrong-pw@{server.endpoint}/0", "chat")
        with pytest.raises(SessionStoreUnavailable, match="credentials") as info:
            wrong.load("s")
        assert "wrong-pw" not in str(info.value)
        narrow = RedisSessionStore(f"redis://narrow:pw2@{server.endpoint}/0", "chat")
        with pytest.raises(SessionStoreUnavailable, match="ACL"):  # NOPERM on the keys
            narrow.save("t", b"x", owner="a", expected_version=0)
        for made in (store, wrong, narrow):
            made.close()
