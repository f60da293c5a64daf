from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient, EtcdOptions


@pytest.fixture
def etcd(etcd_endpoint: str) -> Iterator[EtcdClient]:
    """A raw etcd client on the test's etcd, to write records as an operator would."""
    client = EtcdClient(EtcdOptions((etcd_endpoint,)))
    yield client
    client.close()


@pytest.fixture
def schema() -> KeySchema:
    return KeySchema("chat")
