from __future__ import annotations

from collections.abc import Iterator

import pytest
from shells import KINDS

from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient, EtcdOptions


@pytest.fixture
def etcd(etcd_endpoint: str) -> Iterator[EtcdClient]:
    """A raw etcd client on the test's etcd, to write records as an operator would."""
    client = EtcdClient(EtcdOptions((etcd_endpoint,)))
    yield client
    client.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Which shard server shell the test runs on: "sync" (ShardServer) or "asyncio"
    (AsyncShardServer, driven through tests/integration/shells.py)."""
    return str(request.param)


@pytest.fixture
def schema() -> KeySchema:
    return KeySchema("chat")
