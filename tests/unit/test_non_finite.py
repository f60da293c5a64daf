"""NaN and infinity are refused with ConfigError wherever seconds are configured (issue
13): a ``<= 0`` check lets NaN through, and both reached deadlines, leases and sleeps."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from test_client_hot_path import EchoStub

from shardroute import cli
from shardroute._validate import grace_or, seconds
from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdOptions
from shardroute.model import Shard
from shardroute.server import ServerConfig, ShardServer
from shardroute.sessions.store import InMemorySessionStore
from shardroute.transport import OutlierDetector

NAN, INF = math.nan, math.inf
BAD = [NAN, INF, -INF]


def source() -> InMemoryTopologySource:
    return InMemoryTopologySource("t", [Shard("s0", "127.0.0.1:1")])


def shard(**kwargs: Any) -> ShardServer:
    return ShardServer(**{"shard_id": "s", "service": "chat", "etcd": None, **kwargs})


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize(
    ("what", "build"),
    [
        ("ShardClient timeout", lambda v: ShardClient(source(), timeout=v)),
        ("AsyncShardClient timeout", lambda v: AsyncShardClient(source(), timeout=v)),
        ("ServerConfig drain_grace_s", lambda v: ServerConfig("s", "chat", None, drain_grace_s=v)),
        ("ShardServer drain_grace_s", lambda v: shard(drain_grace_s=v)),
        ("hold_timeout_s", lambda v: shard(hold_timeout_s=v)),
        ("session_idle_ttl_s", lambda v: shard(session_idle_ttl_s=v)),
        ("session_ttl_s", lambda v: shard(session_ttl_s=v)),
        ("etcd_timeout_s", lambda v: shard(etcd=("127.0.0.1:2379",), etcd_timeout_s=v)),
        ("EtcdOptions timeout", lambda v: EtcdOptions(timeout=v)),
        ("retry_failed_endpoint_s", lambda v: EtcdOptions(retry_failed_endpoint_s=v)),
        ("source timeout", lambda v: EtcdTopologySource("127.0.0.1:2379", "chat", timeout=v)),
        ("source backoff", lambda v: EtcdTopologySource("h:1", "chat", backoff_max_s=v)),
        ("store ttl_s", lambda v: InMemorySessionStore(ttl_s=v)),
        ("ejection", lambda v: OutlierDetector(max_ejection_s=v)),
    ],
)
def test_non_finite_seconds_are_refused(
    what: str, build: Callable[[float], object], value: float
) -> None:
    with pytest.raises(ConfigError, match="finite"):
        build(value)


@pytest.mark.parametrize("value", [*BAD, 0, -1])
def test_a_per_call_timeout_that_is_not_finite_and_positive_is_refused_before_sending(
    value: float,
) -> None:
    client = ShardClient(source(), timeout=5)
    try:
        echo = client.stub(EchoStub).Echo
        with pytest.raises(ConfigError, match="timeout must be a finite number"):
            echo(b"x", session_key="k", timeout=value)
        assert client.stats.snapshot() == {}  # nothing was sent
    finally:
        client.close()


def test_grace_periods_of_a_drain_or_stop() -> None:
    server = shard()
    for value in BAD:
        with pytest.raises(ConfigError):
            server.begin_drain(value)  # refused now, not later in the background
        with pytest.raises(ConfigError):
            server.stop(value)
    assert grace_or(None, 10.0) == grace_or(0.0, 10.0) == grace_or(-1.0, 10.0) == 10.0
    assert grace_or(2.5, 10.0) == 2.5


def test_seconds() -> None:
    assert seconds("t", 1) == 1 and seconds("t", 0.5) == 0.5 and seconds("t", 0, zero=True) == 0
    for value in [*BAD, 0, -1, True, "1"]:
        with pytest.raises(ConfigError, match="t must be a finite number of seconds > 0"):
            seconds("t", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "argv",
    [
        ["topology", "--etcd", "h:1", "--service", "chat", "--timeout", "nan"],
        ["topology", "--etcd", "h:1", "--service", "chat", "--timeout", "inf"],
        ["drain", "--etcd", "h:1", "--service", "chat", "--shard", "s", "--grace", "nan"],
        ["demo", "--duration", "inf"],
    ],
)
def test_cli_refuses_non_finite_seconds(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "must be a finite number > 0" in capsys.readouterr().err
