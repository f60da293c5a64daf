"""The shard lease outlives a slow etcd call: its TTL is at least twice the etcd timeout,
and a keep-alive call is bounded by a third of it (issue 14; docs/server.md)."""

from __future__ import annotations

import pytest

from shardroute.errors import ConfigError
from shardroute.etcd import EtcdOptions
from shardroute.server import ShardServer
from shardroute.server.config import ServerConfig

ETCD = ("127.0.0.1:2379",)


def test_defaults_leave_room_for_slow_keepalives() -> None:
    config = ServerConfig(shard_id="s1", service="chat", etcd=ETCD)
    assert config.lease_ttl_s == 10
    assert config.etcd_timeout == 5.0
    assert config.keepalive_interval_s == 2.5
    assert config.keepalive_timeout_s == pytest.approx(10 / 3)
    # A keep-alive that hangs for its whole timeout is retried before the TTL is over.
    worst = config.keepalive_interval_s + 2 * config.keepalive_timeout_s
    assert worst < config.lease_ttl_s
    assert config.etcd_options(keepalive=True).timeout == pytest.approx(10 / 3)
    assert config.etcd_options().timeout == 5.0


def test_a_short_lease_gets_a_short_default_timeout() -> None:
    config = ServerConfig(shard_id="s1", service="chat", etcd=ETCD, lease_ttl_s=2)
    assert config.etcd_timeout == 1.0
    assert config.keepalive_timeout_s == pytest.approx(2 / 3)


@pytest.mark.parametrize("ttl, timeout", [(5, 5.0), (10, 6.0), (2, 1.5)])
def test_a_timeout_over_half_the_ttl_is_refused(ttl: int, timeout: float) -> None:
    with pytest.raises(ConfigError, match=r"etcd_timeout_s .* at most half of lease_ttl_s"):
        ShardServer(
            shard_id="s1", service="chat", etcd=ETCD, lease_ttl_s=ttl, etcd_timeout_s=timeout
        )
    with pytest.raises(ConfigError, match="at most half"):
        ShardServer(
            shard_id="s1", service="chat", etcd=EtcdOptions(ETCD, timeout=timeout), lease_ttl_s=ttl
        )


def test_half_the_ttl_is_accepted() -> None:
    server = ShardServer(shard_id="s1", service="chat", etcd=ETCD, lease_ttl_s=4, etcd_timeout_s=2)
    assert server.config.etcd_timeout == 2
