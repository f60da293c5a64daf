"""The session stores the contract suites run on: in memory, etcd, Redis and Redis
Cluster, each on a real server (one per module: store_fixtures.py, loaded with
``pytest_plugins = ["store_fixtures"]``; the cluster is the plugin's ``redis_cluster``,
one per test run). Each test gets its own service name, so tests sharing a server never
see each other's keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.sessions import EtcdSessionStore, InMemorySessionStore, SessionStore
from shardroute.sessions._redis_client import connect
from shardroute.sessions.redis_options import RedisOptions
from shardroute.sessions.redis_store import RedisSessionStore

KINDS = ("memory", "etcd", "redis", "redis-cluster")

StoreFactory = Callable[..., SessionStore]
RawVersion = Callable[[str], int | None]
"""What is really stored for a session key (its version), bypassing the store's load()."""


def redis_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of the module's Redis (``kind="redis"``) or of the run's cluster."""
    if kind == "redis":
        return str(request.getfixturevalue("shared_redis").url)
    return str(request.getfixturevalue("redis_cluster").url)


def store_factory(request: pytest.FixtureRequest, kind: str, service: str) -> StoreFactory:
    """Makes stores of ``kind`` (keyword arguments: ``ttl_s``, ``fold``, ...); the Redis
    ones are closed at the test's end."""
    if kind == "memory":
        return lambda **kwargs: InMemorySessionStore(**kwargs)
    if kind == "etcd":
        etcd: EtcdClient = request.getfixturevalue("shared_etcd")
        return lambda **kwargs: EtcdSessionStore(etcd, service, **kwargs)
    url = redis_url(request, kind)

    def make(**kwargs: Any) -> SessionStore:
        store = RedisSessionStore(url, service, **kwargs)
        request.addfinalizer(store.close)
        return store

    return make


def raw_reader(request: pytest.FixtureRequest, kind: str, store: SessionStore) -> RawVersion:
    """Reads a session's version as stored, without the store's own code."""
    if isinstance(store, InMemorySessionStore):
        memory = store

        def memory_version(session_key: str) -> int | None:
            with memory._lock:  # the raw dict, not load()
                held = memory._states.get(session_key)
            return None if held is None else held.state.version

        return memory_version
    if isinstance(store, EtcdSessionStore):
        etcd: EtcdClient = request.getfixturevalue("shared_etcd")
        keys = KeySchema(store.service)

        def etcd_version(session_key: str) -> int | None:
            found = etcd.get_with_version(keys.state(session_key))
            return None if found is None else found[1]

        return etcd_version
    assert isinstance(store, RedisSessionStore)
    client = connect(RedisOptions.from_url(redis_url(request, kind)))
    request.addfinalizer(client.close)
    redis_store = store

    def redis_version(session_key: str) -> int | None:
        raw = client.hget(redis_store.key(session_key), "v")
        return None if raw is None else int(raw)

    return redis_version
