"""Fixtures of the store suites (tests/integration/stores.py): one etcd and one Redis per
module, and a service name per test. Load with ``pytest_plugins = ["store_fixtures"]``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.redis import RedisServer


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdClient]:
    """One etcd for the module's tests; each test uses its own service name."""
    with EtcdServer() as server:
        client = EtcdClient(EtcdOptions((server.endpoint,)))
        yield client
        client.close()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the module's tests."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def service() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
