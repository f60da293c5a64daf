"""Scaling signals: the load report's compatible extension, labels, FleetSignals, history."""

from __future__ import annotations

import json
from types import MappingProxyType

from shardroute.discovery.records import encode_load, parse_load
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.scaling import CapacityClass, FleetSignals, RouterSignals, SignalHistory


def test_calls_total_round_trips_and_old_reports_still_parse() -> None:
    report = LoadReport(inflight=3, sessions=5, latency_ms_p95=12.5, ts=10.0, calls_total=77)
    assert parse_load("k", encode_load(report)) == report
    old = json.dumps({"inflight": 3, "queue_depth": 1, "ts": 1.0}).encode()
    assert parse_load("k", old).calls_total == 0


def _topology(reports: dict[str, LoadReport], labels: dict[str, dict[str, str]]) -> Topology:
    shards = {
        sid: Shard(
            sid,
            f"127.0.0.1:{7000 + i}",
            zone="a" if i % 2 == 0 else "b",
            capacity=10,
            labels=MappingProxyType(labels.get(sid, {})),
            state=ShardState.DRAINING if sid == "s3" else ShardState.ACTIVE,
        )
        for i, sid in enumerate(["s0", "s1", "s2", "s3"])
    }
    return Topology("chat", 1, MappingProxyType(shards), MappingProxyType(reports))


def test_fleet_signals_from_a_topology() -> None:
    labels = {
        "s0": {"capacity_class": "reserved", "cost_per_hour": "0.5"},
        "s1": {"capacity_class": "spot", "cost_per_hour": "0.2"},
        "s2": {"capacity_class": "bogus", "cost_per_hour": "-3"},
    }
    first = {
        "s0": LoadReport(inflight=4, queue_depth=2, ts=100.0, calls_total=1000),
        "s1": LoadReport(inflight=2, latency_ms_p95=50.0, ts=100.0, calls_total=0),
        "s3": LoadReport(inflight=9, sessions=7, ts=100.0, calls_total=10),
    }
    t1 = FleetSignals.from_topology(_topology(first, labels), 100.0)
    by_id = {s.shard_id: s for s in t1.shards}
    assert by_id["s0"].capacity_class is CapacityClass.RESERVED
    assert by_id["s0"].cost_per_hour == 0.5
    assert by_id["s2"].capacity_class is CapacityClass.ON_DEMAND  # bad label: default
    assert by_id["s2"].cost_per_hour == 1.0
    assert t1.malformed == {"s2"}
    assert t1.active_count == 3  # s3 is draining
    assert t1.inflight == 6 and t1.capacity == 30
    assert t1.queue_per_shard == 2 / 3
    assert t1.zones() == {"a": 2, "b": 1}
    assert t1.request_rate == 0.0  # one report each: no rate yet
    second = {
        "s0": LoadReport(inflight=4, ts=110.0, calls_total=1500),
        "s1": LoadReport(inflight=2, latency_ms_p95=50.0, ts=100.0, calls_total=0),
        "s3": LoadReport(inflight=0, ts=105.0, calls_total=60),
    }
    t2 = FleetSignals.from_topology(_topology(second, labels), 111.0, t1)
    rates = {s.shard_id: s.rate for s in t2.shards}
    assert rates == {"s0": 50.0, "s1": 0.0, "s2": 0.0, "s3": 10.0}
    assert t2.request_rate == 60.0  # draining shards still serve
    # The same reports again: the rates carry over instead of dropping to 0.
    t3 = FleetSignals.from_topology(_topology(second, labels), 112.0, t2)
    assert t3.request_rate == 60.0
    assert t3.fresh_share(1.0) == 0.0 and t3.fresh_share(5.0) == 1 / 3
    assert t3.fresh_share(30.0) == 2 / 3  # s2 never reported


def test_history_keeps_the_last_samples_and_feeds_the_forecaster_once_per_step() -> None:
    history = SignalHistory(max_samples=3, step_s=60.0, season_s=600.0)
    for ts in range(0, 300, 20):
        history = history.appended(FleetSignals(float(ts)))
    assert [s.ts for s in history.samples] == [240.0, 260.0, 280.0]
    assert history.model.count == 5  # 0, 60, 120, 180, 240
    assert [s.ts for s in history.since(260.0)] == [260.0, 280.0]


def test_router_signals_are_deltas_of_a_clients_call_stats() -> None:
    first = RouterSignals.between({"calls": 100, "spill": 10, "errors": 1}, None)
    assert first.calls == 100 and first.spill_share == 0.1
    second = RouterSignals.between(
        {"calls": 150, "spill": 20, "zone_fallback": 5, "errors": 1, "failovers": 2}, first
    )
    assert second.calls == 50 and second.spill_share == 15 / 50
    assert second.error_share == 0.0 and second.failovers == 2 and second.redirects == 0
    idle = RouterSignals.between(dict(second.counters), second)
    assert idle.calls == 0 and idle.spill_share == 0.0
    topology = _topology({}, {})
    history = SignalHistory().observe(topology, 1.0, {"calls": 10})
    history = history.observe(topology, 2.0, {"calls": 30, "spill": 10})
    latest = history.latest
    assert latest is not None and latest.router is not None
    assert latest.router.calls == 20 and latest.router.spill_share == 0.5
    assert SignalHistory().observe(topology, 1.0).samples[0].router is None
