"""The pure parts of the shard server: lifecycle, config, accounting, write policy."""

from __future__ import annotations

import random

import pytest

from shardroute.errors import ConfigError
from shardroute.model import LoadReport, ShardState
from shardroute.server import LoadAccounting, LoadReportPolicy, ServerConfig, ServerState
from shardroute.server.lifecycle import Lifecycle
from shardroute.server.load import is_accounted


def test_lifecycle_takes_each_transition_once() -> None:
    life = Lifecycle()
    assert not life.advance(ServerState.DRAINING)  # not started yet
    assert life.advance(ServerState.STARTING) and life.advance(ServerState.SERVING)
    assert life.advance(ServerState.DRAINING)
    assert not life.advance(ServerState.DRAINING)  # a second drain does nothing
    assert life.advance(ServerState.STOPPING) and not life.advance(ServerState.STOPPING)
    assert life.advance(ServerState.STOPPED) and life.wait_for(frozenset({ServerState.STOPPED}))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shard_id": "a/b"},
        {"capacity": 0},
        {"weight": 0.0},
        {"weight": 1e9},  # readers would skip its record (docs/etcd-schema.md, "Bounds")
        {"weight": float("nan")},
        {"capacity": 10**7},
        {"lease_ttl_s": 1},
        {"port": 70000},
        {"advertise_address": "nohost"},
        {"etcd": ("bad",)},
        {"etcd": ("127.0.0.1:2379",), "etcd_user": "u"},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"shard_id": "s", "service": "chat", "etcd": None}
    with pytest.raises(ConfigError):
        ServerConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_config_builds_the_record_and_the_advertised_address() -> None:
    config = ServerConfig(
        shard_id="s", service="chat", etcd="127.0.0.1:2379", host="0.0.0.0", zone="z"
    )
    assert config.etcd == ("127.0.0.1:2379",)
    assert config.advertised(7000) == "127.0.0.1:7000"
    shard = config.shard("10.0.0.1:7000", ShardState.DRAINING)
    assert (shard.id, shard.zone, shard.state) == ("s", "z", ShardState.DRAINING)
    assert config.workers == 64 + 8


def test_accounting_counts_and_takes_percentiles_over_the_window() -> None:
    now = [0.0]
    acct = LoadAccounting(window_s=10.0, clock=lambda: now[0])
    for ms in range(1, 101):
        started = acct.call_started()
        now[0] += ms / 1000
        acct.call_finished(started)
    assert acct.inflight == 0 and acct.calls_total == 100
    p50, p95 = acct.latency_ms()
    assert p50 == pytest.approx(50) and p95 == pytest.approx(95)
    now[0] += 60  # every sample is older than the window
    assert acct.latency_ms() == (0.0, 0.0)
    acct.enqueued()
    acct.call_started()
    report = acct.report(sessions=3, now=123.0)
    assert (report.inflight, report.queue_depth, report.sessions, report.ts) == (1, 1, 3, 123.0)
    assert not acct.wait_idle(0)


def test_write_policy_bounds_the_rate_and_skips_small_changes() -> None:
    policy = LoadReportPolicy(capacity=64, rng=random.Random(1))
    assert policy.should_write(LoadReport(), 0.0)  # first report
    policy.written(LoadReport(), 0.0)
    big = LoadReport(inflight=20)
    assert not policy.should_write(big, 0.5)  # under a second: never
    assert policy.should_write(big, 1.3)  # ≥ 1.2 s (1 s + at most 20 % jitter)
    assert not policy.should_write(LoadReport(inflight=15), 1.3)  # < 25 % of 64 = 16
    assert policy.should_write(LoadReport(inflight=16), 1.3)
    assert policy.should_write(LoadReport(sessions=1), 1.3)
    assert policy.should_write(LoadReport(latency_ms_p95=6.0), 1.3)
    assert not policy.should_write(LoadReport(latency_ms_p95=4.0), 1.3)
    assert policy.should_write(LoadReport(), 10.1)  # heartbeat


def test_write_policy_under_constant_churn_writes_at_most_once_a_second() -> None:
    policy = LoadReportPolicy(capacity=4, rng=random.Random(7))
    writes = 0
    for tick in range(0, 60 * 20):  # 60 s of 50 ms ticks, load changing every tick
        now = tick * 0.05
        report = LoadReport(inflight=tick % 5, sessions=tick)
        if policy.should_write(report, now):
            policy.written(report, now)
            writes += 1
    assert 50 <= writes <= 61


def test_health_and_control_calls_are_not_load() -> None:
    assert not is_accounted("/grpc.health.v1.Health/Watch")
    assert not is_accounted("/shardroute.v1.ShardControl/GetStatus")
    assert is_accounted("/shardroute.examples.chat.v1.Chat/Generate")
