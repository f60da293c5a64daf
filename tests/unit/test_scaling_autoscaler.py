"""Acting on advice: reconcile, the Autoscaler round with a recording actuator over an
in-memory topology, and the desired-shards gauge read through the OpenTelemetry API."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics

from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import ShardUnavailable
from shardroute.model import LoadReport, Shard
from shardroute.scaling import (
    DESIRED_SHARDS_GAUGE,
    FLEET_GAUGES,
    Autoscaler,
    CapacityClass,
    DesiredShardsGauge,
    QueuePolicy,
    RebalanceResult,
    ScalingAdvice,
    ScalingAdvisor,
    UtilisationPolicy,
    reconcile,
)


def test_reconcile_counts_pending_shards() -> None:
    up = ScalingAdvice(
        0.0,
        2,
        5,
        {"a": 3, "b": 2},
        (),
        additions=(("a", CapacityClass.ON_DEMAND),) * 3,
    )
    assert len(reconcile(up).add) == 3
    assert len(reconcile(up, pending=2).add) == 1
    assert reconcile(up, pending=5).add == ()
    down = ScalingAdvice(0.0, 5, 3, {"a": 2, "b": 1}, (), drain_order=("s4", "s3"))
    assert reconcile(down).drain == ("s4", "s3")
    assert reconcile(down, pending=0).add == ()
    hold = ScalingAdvice(0.0, 3, 3, {"a": 3}, ())
    assert reconcile(hold, pending=1).drain == ()


class Recorder:
    def __init__(self, source: InMemoryTopologySource) -> None:
        self.source = source
        self.added: list[tuple[str, CapacityClass]] = []
        self.drained: list[str] = []
        self.fail_drain = False

    def add_shard(self, zone: str, capacity_class: CapacityClass) -> str:
        self.added.append((zone, capacity_class))
        return f"new-{len(self.added)}"

    def drain_shard(self, shard_id: str) -> None:
        if self.fail_drain:
            raise ShardUnavailable(f"{shard_id} refused", (shard_id,))
        self.drained.append(shard_id)


def _source(n: int, inflight: int) -> InMemoryTopologySource:
    source = InMemoryTopologySource(
        "chat",
        [Shard(f"s{i}", f"127.0.0.1:{7000 + i}", zone="ab"[i % 2], capacity=10) for i in range(n)],
    )
    for i in range(n):
        source.put_load(f"s{i}", LoadReport(inflight=inflight, ts=100.0))
    return source


def test_a_round_adds_then_counts_pending_then_drains_without_repeating() -> None:
    source = _source(2, inflight=9)
    actuator = Recorder(source)
    clock = [100.0]
    advisor = ScalingAdvisor([UtilisationPolicy(0.5)], scale_down_window_s=0, max_shards=10)
    scaler = Autoscaler(advisor, actuator, source, clock=lambda: clock[0])
    advice = scaler.step()
    assert advice.desired_shards == 4 and len(actuator.added) == 2 and scaler.pending == 2
    clock[0] += 15
    scaler.step()
    assert len(actuator.added) == 2  # still pending: nothing more
    # The two new shards registered; load fell.
    for i in (2, 3):
        source.put_shard(
            Shard(f"new-{i - 1}", f"127.0.0.1:{7100 + i}", zone="ab"[i % 2], capacity=10)
        )
    for sid in ("s0", "s1", "new-1", "new-2"):
        source.put_load(sid, LoadReport(inflight=1, ts=clock[0]))
    clock[0] += 15
    advice = scaler.step()
    assert scaler.pending == 0
    assert advice.desired_shards == 1 and len(actuator.drained) == 3
    assert scaler.scale_ups == 2 and scaler.scale_downs == 3
    clock[0] += 15
    scaler.step()  # the drained shards have not left yet: not drained twice
    assert len(actuator.drained) == 3


class CountingRebalancer:
    def __init__(self) -> None:
        self.runs = 0

    def run(self) -> RebalanceResult:
        self.runs += 1
        return RebalanceResult({}, (), 5, {}, {}, False, 0.0)


def test_a_rebalance_runs_once_after_a_shard_joins_or_returns() -> None:
    source = _source(2, inflight=9)
    rebalancer = CountingRebalancer()
    advisor = ScalingAdvisor([UtilisationPolicy(0.5)], max_shards=3)
    scaler = Autoscaler(
        advisor, Recorder(source), source, rebalancer=rebalancer, clock=lambda: 100.0
    )
    scaler.step()  # adds new-1 (max 3 shards)
    scaler.step()
    assert rebalancer.runs == 0  # not active yet
    source.put_shard(Shard("new-1", "127.0.0.1:7200", zone="a", capacity=10))
    scaler.step()
    scaler.step()
    assert rebalancer.runs == 1 and scaler.sessions_rebalanced == 5
    # A shard that comes back on its own (restarted by its supervisor) counts too.
    source.remove_shard("s0")
    scaler.step()
    assert rebalancer.runs == 1
    source.put_shard(Shard("s0", "127.0.0.1:7000", zone="a", capacity=10))
    scaler.step()
    assert rebalancer.runs == 2


def test_router_stats_reach_the_history() -> None:
    source = _source(2, inflight=1)
    stats = {"calls": 10, "spill": 0}
    scaler = Autoscaler(
        ScalingAdvisor([UtilisationPolicy(0.5)]), None, source, router_stats=lambda: dict(stats)
    )
    scaler.step()
    stats.update(calls=30, spill=8)
    scaler.step()
    latest = scaler.history.latest
    assert latest is not None and latest.router is not None
    assert latest.router.calls == 20 and latest.router.spill_share == 0.4


def test_a_failed_actuator_call_is_retried_next_round() -> None:
    source = _source(4, inflight=0)
    actuator = Recorder(source)
    actuator.fail_drain = True
    advisor = ScalingAdvisor([UtilisationPolicy(0.5)], scale_down_window_s=0)
    scaler = Autoscaler(advisor, actuator, source, clock=lambda: 100.0)
    scaler.step()
    assert actuator.drained == [] and scaler.scale_downs == 0
    actuator.fail_drain = False
    scaler.step()
    assert len(actuator.drained) == 3


class GaugeMeter(metrics.NoOpMeter):
    """A meter that keeps the observable gauges' callbacks, as an SDK would call them."""

    def __init__(self) -> None:
        super().__init__("shardroute")
        self.callbacks: dict[str, Any] = {}

    def create_observable_gauge(self, name: str, callbacks: Any = None, **kwargs: Any) -> Any:
        self.callbacks[name] = callbacks
        return super().create_observable_gauge(name, callbacks, **kwargs)


def test_the_gauge_reports_desired_shards_per_zone() -> None:
    meter = GaugeMeter()
    gauge = DesiredShardsGauge(meter)
    source = _source(2, inflight=10)
    scaler = Autoscaler(
        ScalingAdvisor([QueuePolicy(), UtilisationPolicy(0.5)]), None, source, gauge=gauge
    )
    scaler.step()
    (callback,) = meter.callbacks[DESIRED_SHARDS_GAUGE]
    points = {o.attributes["zone"]: o.value for o in callback(metrics.CallbackOptions())}
    assert points == {"a": 2, "b": 2}
    fleet = {
        name: [o.value for o in meter.callbacks[name][0](metrics.CallbackOptions())]
        for name in FLEET_GAUGES
    }
    assert fleet["shardroute_fleet_active_shards"] == [2]
    assert fleet["shardroute_fleet_utilisation"] == [1.0]
    assert fleet["shardroute_fleet_queue_per_shard"] == [0.0]
