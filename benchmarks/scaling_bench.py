"""Autoscaling policies on a simulated fleet (issue 12).

A seeded synthetic trace (a diurnal curve, random bursts of a few minutes, and a lasting
step up on the last day), or ``--trace FILE`` (one request timestamp in seconds per line),
is replayed through a simulated fleet under three policy sets, all in one run:

- ``baseline``: Kubernetes' HPA formula on utilisation (target 60 %, 10 % tolerance,
  5-minute scale-down stabilisation);
- ``reactive``: queue (HPA formula on queue per shard) + latency SLO + cost-aware
  scale-down;
- ``predictive``: Holt-Winters forecast of the request rate (horizon = start-up time + 2
  sampling intervals; when the observed rate jumps above the forecast, the policy's
  reactive fallback sizes for it at once) + cost-aware scale-down, with the latency
  policy as the guard. (No queue guard: the HPA formula on queue depth overshoots near
  saturation, where the queue grows much faster than the load, 24 shards for a burst
  that needs 13; the fallback already reacts to the burst at the right size.)

Each arm is the real :class:`~shardroute.scaling.ScalingAdvisor` fed
:class:`~shardroute.scaling.FleetSignals` every ``--interval`` seconds, acting through
:func:`~shardroute.scaling.reconcile`. The fleet: each shard serves ``--slots`` calls at a
time, a call takes ``--service-s`` on average (p95 1.5 x that); a fluid backlog plus the
Sakasegawa M/M/c approximation of the queueing wait give each step's p95; a new shard
serves after ``--startup-s`` and costs from its start; a drained shard stops taking calls at
once and costs ``--drain-s`` more. Reserved shards (the first ``--reserved``) cost 0.6/h,
on-demand 1.0/h. The first ``--warmup-days`` train every arm's history and are not scored.

Prints one JSON line: per arm ``slo_violation_s``, ``shard_hours``, ``cost``,
``scale_events``, ``max_shards``, and the ratios of ``predictive`` to ``baseline``.
Goal: predictive ``slo_violation_s`` <= 0.5 x baseline at ``cost`` <= 1.0 x baseline.
``--plot PATH`` writes a PNG of load, shards and p95 (needs the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shardroute.model import ShardState
from shardroute.scaling import (
    CapacityClass,
    CostAwarePolicy,
    FleetSignals,
    LatencyPolicy,
    PredictivePolicy,
    QueuePolicy,
    ScalingAdvice,
    ScalingAdvisor,
    ShardSignals,
    SignalHistory,
    UtilisationPolicy,
    reconcile,
)

DAY = 86_400.0
PRICE = {CapacityClass.RESERVED: 0.6, CapacityClass.ON_DEMAND: 1.0, CapacityClass.SPOT: 0.35}


def synthetic_trace(days: int, dt: float, seed: int, workday: float = 1.2) -> list[float]:
    """Requests per second at each ``dt`` step: a diurnal curve, a workday that starts and
    ends within a minute (09:00-18:00, +``workday``: recurring, so a forecaster can learn it),
    random bursts (+20-45 % for 2-7 minutes, 2-4 a day: no forecaster sees them), and a
    lasting step (+30 % from 10:00 on the last day), with 5 % noise."""
    rng = random.Random(seed)
    steps = int(days * DAY / dt)
    bursts: list[tuple[float, float, float]] = []
    for day in range(days):
        for _ in range(rng.randint(2, 4)):
            start = day * DAY + rng.uniform(7, 21) * 3600
            bursts.append((start, start + rng.uniform(120, 420), rng.uniform(0.2, 0.45)))
    step_at = (days - 1) * DAY + 10 * 3600
    rates = []
    for i in range(steps):
        t = i * dt
        hour = (t % DAY) / 3600
        diurnal = 20.0 + 60.0 * math.sin(math.pi * hour / 24) ** 2
        edge = min(max((hour - 9) * 60, 0.0), 1.0) - min(max((hour - 18) * 60, 0.0), 1.0)
        factor = (1.0 + workday * edge) * (1.0 + sum(x for a, b, x in bursts if a <= t < b))
        if t >= step_at:
            factor *= 1.3
        rates.append(max(0.0, diurnal * factor * rng.uniform(0.95, 1.05)))
    return rates


def trace_from_file(path: str, dt: float) -> list[float]:
    """Requests per second at each ``dt`` step from a file of request timestamps."""
    with open(path) as f:
        stamps = sorted(float(line) for line in f if line.strip())
    if not stamps:
        raise SystemExit(f"{path}: no timestamps")
    counts = [0] * (int((stamps[-1] - stamps[0]) / dt) + 1)
    for ts in stamps:
        counts[int((ts - stamps[0]) / dt)] += 1
    return [c / dt for c in counts]


@dataclass
class SimShard:
    shard_id: str
    zone: str
    klass: CapacityClass
    started: float
    ready_at: float
    drained_at: float | None = None


@dataclass
class Fleet:
    """The simulated shards of one arm, and what they cost."""

    args: argparse.Namespace
    shards: list[SimShard] = field(default_factory=list)
    backlog: float = 0.0
    shard_seconds: float = 0.0
    cost: float = 0.0
    events: int = 0
    counter: int = 0

    def add(self, zone: str, klass: CapacityClass, now: float, ready: bool = False) -> None:
        self.counter += 1
        delay = 0.0 if ready else self.args.startup_s
        self.shards.append(SimShard(f"s{self.counter}", zone, klass, now, now + delay))

    def running(self, now: float) -> list[SimShard]:
        return [s for s in self.shards if s.drained_at is None and s.ready_at <= now]

    def pending(self, now: float) -> int:
        return sum(1 for s in self.shards if s.drained_at is None and s.ready_at > now)

    def step(self, now: float, rate: float, dt: float) -> tuple[float, float, float]:
        """Serve ``dt`` seconds of ``rate`` calls/s; (p95 seconds, utilisation, queue)."""
        a = self.args
        for s in list(self.shards):  # pay for every started, not yet gone shard
            gone = s.drained_at is not None and now >= s.drained_at + a.drain_s
            if gone:
                self.shards.remove(s)
                continue
            self.shard_seconds += dt
            self.cost += PRICE[s.klass] * dt / 3600
        n = len(self.running(now))
        capacity = n * a.slots / a.service_s  # calls per second at full use
        if capacity == 0:
            self.backlog += rate * dt
            return math.inf, 1.0, self.backlog
        self.backlog = max(0.0, self.backlog + (rate - capacity) * dt)
        rho = min(0.99, rate / capacity)
        c = a.slots
        wait = a.service_s * rho ** (math.sqrt(2 * (c + 1)) - 1) / (c * (1 - rho))
        drain_wait = self.backlog / capacity
        p95 = 1.5 * a.service_s + 3 * wait + drain_wait
        util = 1.0 if self.backlog > 0 else rho
        queue = rate * wait + self.backlog
        return p95, util, queue

    def signals(
        self, now: float, util: float, queue: float, p95: float, rate: float
    ) -> FleetSignals:
        running = self.running(now)
        n = max(1, len(running))
        return FleetSignals(
            now,
            tuple(
                ShardSignals(
                    s.shard_id,
                    s.zone,
                    ShardState.ACTIVE,
                    self.args.slots,
                    s.klass,
                    PRICE[s.klass],
                    inflight=round(util * self.args.slots),
                    queue_depth=round(queue / n),
                    sessions=round(rate * 30 / n),
                    latency_ms_p95=min(p95, 3600.0) * 1000,
                    ts=now,
                    rate=rate / n,
                    reported=True,
                )
                for s in running
            ),
        )


def arms(args: argparse.Namespace) -> dict[str, ScalingAdvisor]:
    slo_ms = args.slo_s * 1000
    per_shard = args.slots / args.service_s
    horizon = args.startup_s + 2 * args.interval
    common = {
        "min_shards": 2,
        "max_shards": 200,
        "min_per_zone": 1,
        "zones": ("a", "b"),
        "class_limits": {CapacityClass.RESERVED: args.reserved, CapacityClass.ON_DEMAND: None},
    }
    latency = LatencyPolicy(slo_ms, intervals=2, low_ratio=0.8, quiet_s=300)
    return {
        "baseline": ScalingAdvisor([UtilisationPolicy(0.6, 0.1)], **common),  # type: ignore[arg-type]
        "reactive": ScalingAdvisor(  # type: ignore[arg-type]
            [QueuePolicy(2.0), latency, CostAwarePolicy(0.3, 0.6, window_s=600)], **common
        ),
        "predictive": ScalingAdvisor(  # type: ignore[arg-type]
            [
                PredictivePolicy(horizon_s=horizon, per_shard_rate=per_shard, target=args.target),
                latency,
                CostAwarePolicy(0.45, 0.65, window_s=300),
            ],
            **common,
        ),
    }


def run_arm(
    advisor: ScalingAdvisor, rates: Sequence[float], args: argparse.Namespace
) -> tuple[dict[str, float], list[tuple[float, float, int, float]]]:
    fleet = Fleet(args)
    for i in range(max(2, args.reserved)):
        fleet.add("ab"[i % 2], CapacityClass.RESERVED, 0.0, ready=True)
    history = SignalHistory(max_samples=120, step_s=60.0, season_s=args.season_s)
    advice: ScalingAdvice | None = None
    scored_from = args.warmup_days * DAY
    violation = 0.0
    per_sample = max(1, round(args.interval / args.dt))
    series: list[tuple[float, float, int, float]] = []
    base = (0.0, 0.0, 0.0, 0.0)
    for i, rate in enumerate(rates):
        now = i * args.dt
        if now == scored_from:
            base = (fleet.shard_seconds, fleet.cost, float(fleet.events), 0.0)
        p95, util, queue = fleet.step(now, rate, args.dt)
        if now >= scored_from and p95 > args.slo_s:
            violation += args.dt
        if i % per_sample:
            continue
        history = history.appended(fleet.signals(now, util, queue, p95, rate))
        advice = advisor.advise(history, advice)
        actions = reconcile(advice, fleet.pending(now))
        for zone, klass in actions.add:
            fleet.add(zone, klass, now)
            fleet.events += 1
        for shard_id in actions.drain:
            for s in fleet.shards:
                if s.shard_id == shard_id and s.drained_at is None:
                    s.drained_at = now
                    fleet.events += 1
        if now >= scored_from:
            series.append((now, rate, len(fleet.running(now)), min(p95, 3 * args.slo_s)))
    result = {
        "slo_violation_s": violation,
        "shard_hours": round((fleet.shard_seconds - base[0]) / 3600, 1),
        "cost": round(fleet.cost - base[1], 2),
        "scale_events": int(fleet.events - base[2]),
        "max_shards": max((n for _, _, n, _ in series), default=0),
    }
    return result, series


def plot(path: str, series: dict[str, list[tuple[float, float, int, float]]], slo: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    first = next(iter(series.values()))
    hours = [t / 3600 for t, *_ in first]
    axes[0].plot(hours, [r for _, r, _, _ in first], color="black", linewidth=0.7)
    axes[0].set_ylabel("requests/s")
    for name, points in series.items():
        axes[1].plot(hours, [n for *_, n, _ in points], label=name, linewidth=0.8)
        axes[2].plot(hours, [p for *_, p in points], label=name, linewidth=0.6)
    axes[1].set_ylabel("serving shards")
    axes[1].legend(loc="upper left")
    axes[2].axhline(slo, color="red", linestyle="--", linewidth=0.8, label="SLO")
    axes[2].set_ylabel("p95 (s)")
    axes[2].set_xlabel("hours")
    axes[2].legend(loc="upper left")
    fig.suptitle("scaling_bench: load, shards and p95 latency per policy set")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=4, help="synthetic trace length")
    p.add_argument("--warmup-days", type=int, default=2, help="not scored: trains the history")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--trace", help="file of request timestamps (s), one per line")
    p.add_argument("--workday", type=float, default=1.2, help="09:00-18:00 extra load (x)")
    p.add_argument("--season-s", type=float, default=DAY)
    p.add_argument("--dt", type=float, default=10.0, help="simulation step (s)")
    p.add_argument("--interval", type=float, default=20.0, help="advice interval (s)")
    p.add_argument("--startup-s", type=float, default=60.0)
    p.add_argument("--drain-s", type=float, default=15.0)
    p.add_argument("--slots", type=int, default=16, help="concurrent calls per shard")
    p.add_argument("--service-s", type=float, default=1.0, help="mean call duration")
    p.add_argument("--slo-s", type=float, default=2.5, help="p95 SLO")
    p.add_argument("--target", type=float, default=0.64, help="predictive target utilisation")
    p.add_argument("--reserved", type=int, default=4, help="reserved shards available")
    p.add_argument("--plot", help="write a PNG here (matplotlib: the bench extra)")
    args = p.parse_args()
    started = time.monotonic()
    if args.trace:
        rates = trace_from_file(args.trace, args.dt)
    else:
        rates = synthetic_trace(args.days, args.dt, args.seed, args.workday)
    results, series = {}, {}
    for name, advisor in arms(args).items():
        results[name], series[name] = run_arm(advisor, rates, args)
    base, pred = results["baseline"], results["predictive"]
    summary = {
        "arms": results,
        "violation_ratio": round(pred["slo_violation_s"] / max(base["slo_violation_s"], 1.0), 3),
        "cost_ratio": round(pred["cost"] / max(base["cost"], 1e-9), 3),
        "scored_hours": round(len(rates) * args.dt / 3600 - args.warmup_days * 24, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.plot:
        plot(args.plot, series, args.slo_s)
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
