"""The shardroute pytest plugin, registered through the ``pytest11`` entry point.

Anyone who installs shardroute gets these fixtures (docs/testing.md):

- ``etcd_server``: a real etcd (:class:`~shardroute.testing.etcd.EtcdServer`) on free
  loopback ports in a temp dir, started for the test and removed after it. Use its
  ``stop()``, ``kill()`` and ``restart()`` for fault tests.
- ``etcd_endpoint``: its ``host:port``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardroute.testing.etcd import EtcdServer


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh, empty etcd server for one test; stopped and cleaned up afterwards."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    """``127.0.0.1:<port>`` of the test's etcd server."""
    return etcd_server.endpoint
