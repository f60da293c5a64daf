"""What the autoscaler sees: one immutable :class:`FleetSignals` per topology snapshot and a
short :class:`SignalHistory` of them. Pure: no I/O, no clock read (every time is passed in).

Per shard, from its etcd load report (``load/<id>``, written within the etcd write budget:
on a notable change, at most once a second, jittered, and at least every 10 s): in-flight
calls, queue depth, sessions held, p95 turn duration over the shard's latency window, and
``calls_total``, whose difference between two reports is the shard's request rate. From the
shard record: zone, capacity, state, and two labels (docs/etcd-schema.md):

- ``capacity_class``: ``reserved`` | ``on-demand`` | ``spot`` (default ``on-demand``);
- ``cost_per_hour``: a finite number ≥ 0 in any currency (default 1).

A label that does not parse is skipped like any malformed value: the default is used and the
shard is named in :attr:`FleetSignals.malformed`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from shardroute.errors import ConfigError
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.scaling.forecast import HoltWinters

__all__ = [
    "CAPACITY_CLASS_LABEL",
    "COST_LABEL",
    "CapacityClass",
    "FleetSignals",
    "RouterSignals",
    "ShardSignals",
    "SignalHistory",
]

CAPACITY_CLASS_LABEL = "capacity_class"
COST_LABEL = "cost_per_hour"


class CapacityClass(enum.StrEnum):
    """How a shard's machine is bought; scale-up prefers them in this order."""

    RESERVED = "reserved"
    """Paid for whether used or not: use it first, drain it last."""
    ON_DEMAND = "on-demand"
    """Paid by the hour while it runs."""
    SPOT = "spot"
    """Cheap but may be taken away: added last."""


def _capacity_class(labels: Mapping[str, str]) -> CapacityClass | None:
    try:
        return CapacityClass(labels.get(CAPACITY_CLASS_LABEL, CapacityClass.ON_DEMAND.value))
    except ValueError:
        return None


def _cost(labels: Mapping[str, str]) -> float | None:
    text = labels.get(COST_LABEL, "1")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class ShardSignals:
    """One shard as the autoscaler sees it.

    ``rate`` is calls per second between this shard's last two distinct reports (0 until it
    has two); ``reported`` is False when the shard has no load report yet.
    """

    shard_id: str
    zone: str
    state: ShardState
    capacity: int
    capacity_class: CapacityClass = CapacityClass.ON_DEMAND
    cost_per_hour: float = 1.0
    inflight: int = 0
    queue_depth: int = 0
    sessions: int = 0
    latency_ms_p95: float = 0.0
    calls_total: int = 0
    ts: float = 0.0
    rate: float = 0.0
    reported: bool = False

    @property
    def active(self) -> bool:
        """Takes new sessions (not draining, not down)."""
        return self.state is ShardState.ACTIVE

    @property
    def utilisation(self) -> float:
        """In-flight calls over capacity."""
        return self.inflight / self.capacity

    @classmethod
    def of(
        cls, shard: Shard, report: LoadReport | None, previous: ShardSignals | None = None
    ) -> tuple[ShardSignals, bool]:
        """The signals of ``shard`` with its latest ``report``; ``previous`` (the same
        shard's signals one sample earlier) gives the rate. Also returns whether a label
        was malformed."""
        klass = _capacity_class(shard.labels)
        cost = _cost(shard.labels)
        base = cls(
            shard.id,
            shard.zone,
            shard.state,
            shard.capacity,
            klass or CapacityClass.ON_DEMAND,
            1.0 if cost is None else cost,
        )
        if report is None:
            return base, klass is None or cost is None
        rate = 0.0
        if previous is not None and previous.reported:
            elapsed = report.ts - previous.ts
            grown = report.calls_total - previous.calls_total
            if elapsed > 0 and grown >= 0:
                rate = grown / elapsed
            elif elapsed == 0 and grown == 0:
                rate = previous.rate
        signals = replace(
            base,
            inflight=report.inflight,
            queue_depth=report.queue_depth,
            sessions=report.sessions,
            latency_ms_p95=report.latency_ms_p95,
            calls_total=report.calls_total,
            ts=report.ts,
            rate=rate,
            reported=True,
        )
        return signals, klass is None or cost is None


@dataclass(frozen=True, slots=True)
class RouterSignals:
    """What one client's router saw since the previous sample, from two snapshots of its
    :class:`~shardroute.transport.CallStats` (free in every client: no etcd write).

    ``decisions``: routing decisions in the interval, the calls that finished (``calls``)
    plus the calls the router refused (``overloaded``). Shares are over ``decisions``:

    - ``spill_share``: spilled past a full home or crossed zones (bounded loads or a
      priority ceiling at work: homes are hot);
    - ``ceiling_share``: the share of decisions **at a priority ceiling**: routed past a
      home that was at the ceiling of the call's priority class (``at_ceiling``, counted
      when routed: a subset of the spill decisions), plus refused because every shard
      that may take the priority was at its ceiling (``overloaded``). Low classes reach
      their ceilings first (70 % for ``batch`` by default), so this rises before the
      fleet is full;
    - ``overloaded_share``: refused with ``Overloaded`` (nothing was sent);
    - ``error_share``: raised after routing (deadline, unavailable, ...).

    ``failovers``, ``redirects``: counts in the interval. ``counters`` is the raw snapshot,
    for the next interval.
    """

    counters: Mapping[str, int]
    calls: int = 0
    spill_share: float = 0.0
    error_share: float = 0.0
    failovers: int = 0
    redirects: int = 0
    overloaded: int = 0
    ceiling_share: float = 0.0
    overloaded_share: float = 0.0

    @property
    def decisions(self) -> int:
        """Routing decisions in the interval: ``calls`` + ``overloaded``."""
        return self.calls + self.overloaded

    @classmethod
    def between(cls, now: Mapping[str, int], before: RouterSignals | None) -> RouterSignals:
        """The interval from ``before`` (None: the first snapshot) to the snapshot ``now``."""
        then = before.counters if before is not None else {}

        def delta(*keys: str) -> int:
            return max(0, sum(now.get(k, 0) - then.get(k, 0) for k in keys))

        def share(*keys: str) -> float:
            return min(1.0, delta(*keys) / decisions) if decisions else 0.0

        calls, overloaded = delta("calls"), delta("overloaded")
        decisions = calls + overloaded
        return cls(
            MappingProxyType(dict(now)),
            calls,
            share("spill", "zone_fallback"),
            share("errors"),
            delta("failovers"),
            delta("redirects"),
            overloaded,
            share("at_ceiling", "overloaded"),
            share("overloaded"),
        )


@dataclass(frozen=True, slots=True)
class FleetSignals:
    """The fleet at one instant ``ts`` (unix seconds): every registered shard's signals.

    Aggregates count **active** shards only: draining shards are leaving and down shards
    take nothing. ``malformed`` names shards whose scaling labels did not parse.
    """

    ts: float
    shards: tuple[ShardSignals, ...] = ()
    malformed: frozenset[str] = frozenset()
    router: RouterSignals | None = field(default=None, compare=False)
    """A client's routing signals, when the sampler has a client (None otherwise)."""
    # Derived once from ``shards`` (the advisor reads them many times):
    active: tuple[ShardSignals, ...] = field(init=False, repr=False, compare=False)
    """Shards taking new sessions."""
    active_count: int = field(init=False, repr=False, compare=False)
    """How many shards take new sessions."""
    capacity: int = field(init=False, repr=False, compare=False)
    """Summed capacity of the active shards."""
    inflight: int = field(init=False, repr=False, compare=False)
    """In-flight calls on active shards."""
    queue_per_shard: float = field(init=False, repr=False, compare=False)
    """Mean queue depth per active shard (0 with none)."""
    utilisation: float = field(init=False, repr=False, compare=False)
    """In-flight over capacity, active shards (0 with none)."""
    latency_ms_p95: float = field(init=False, repr=False, compare=False)
    """The active shards' p95 turn durations weighted by their in-flight calls (a plain
    mean when nothing is in flight)."""
    request_rate: float = field(init=False, repr=False, compare=False)
    """Calls per second over every shard (draining ones still serve)."""
    sessions: int = field(init=False, repr=False, compare=False)
    """Sessions held by every shard."""

    @classmethod
    def from_topology(
        cls,
        topology: Topology,
        now: float,
        previous: FleetSignals | None = None,
        router_counters: Mapping[str, int] | None = None,
    ) -> FleetSignals:
        """Signals of a topology snapshot at ``now``; ``previous`` gives request rates;
        ``router_counters`` (a client's ``stats.snapshot()``) gives :attr:`router`."""
        before = {} if previous is None else {s.shard_id: s for s in previous.shards}
        shards: list[ShardSignals] = []
        malformed: set[str] = set()
        for shard in topology.shards.values():
            signals, bad = ShardSignals.of(
                shard, topology.loads.get(shard.id), before.get(shard.id)
            )
            shards.append(signals)
            if bad:
                malformed.add(shard.id)
        router = None
        if router_counters is not None:
            last = previous.router if previous is not None else None
            router = RouterSignals.between(router_counters, last)
        return cls(now, tuple(shards), frozenset(malformed), router)

    def __post_init__(self) -> None:
        active = tuple(s for s in self.shards if s.active)
        reported = [s for s in active if s.reported]
        weight = sum(s.inflight for s in reported)
        if not reported:
            p95 = 0.0
        elif weight == 0:
            p95 = sum(s.latency_ms_p95 for s in reported) / len(reported)
        else:
            p95 = sum(s.latency_ms_p95 * s.inflight for s in reported) / weight
        capacity = sum(s.capacity for s in active)
        inflight = sum(s.inflight for s in active)
        queued = sum(s.queue_depth for s in active)
        derived = {
            "active": active,
            "active_count": len(active),
            "capacity": capacity,
            "inflight": inflight,
            "queue_per_shard": queued / len(active) if active else 0.0,
            "utilisation": inflight / capacity if capacity else 0.0,
            "latency_ms_p95": p95,
            "request_rate": sum(s.rate for s in self.shards),
            "sessions": sum(s.sessions for s in self.shards),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def zones(self) -> dict[str, int]:
        """Active shards per zone."""
        counts: dict[str, int] = {}
        for s in self.active:
            counts[s.zone] = counts.get(s.zone, 0) + 1
        return counts

    def fresh_share(self, max_age_s: float) -> float:
        """Share of active shards whose report is at most ``max_age_s`` old (1 with none)."""
        active = self.active
        if not active:
            return 1.0
        return sum(1 for s in active if s.reported and self.ts - s.ts <= max_age_s) / len(active)


@dataclass(frozen=True, slots=True)
class SignalHistory:
    """The last ``max_samples`` :class:`FleetSignals`, oldest first, and a forecaster of the
    fleet's request rate fed every ``step_s`` seconds. A value: :meth:`appended` returns a
    new history.

    Args:
        max_samples: samples kept for the reactive policies (consecutive intervals,
            stabilisation windows).
        step_s: the forecaster's sampling period.
        season_s: the forecaster's season (a day by default).
    """

    samples: tuple[FleetSignals, ...] = ()
    max_samples: int = 360
    step_s: float = 60.0
    season_s: float = 86_400.0
    forecaster: HoltWinters | None = field(default=None)
    _next_step: float = 0.0

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.step_s <= 0 or self.season_s < self.step_s:
            raise ConfigError("need max_samples >= 1 and 0 < step_s <= season_s")
        if self.forecaster is None:
            season = max(2, round(self.season_s / self.step_s))
            object.__setattr__(self, "forecaster", HoltWinters(season))

    @property
    def latest(self) -> FleetSignals | None:
        """The newest sample, or None when empty."""
        return self.samples[-1] if self.samples else None

    @property
    def model(self) -> HoltWinters:
        """The request-rate forecaster (one observation per ``step_s``)."""
        assert self.forecaster is not None
        return self.forecaster

    def appended(self, signals: FleetSignals) -> SignalHistory:
        """A history with ``signals`` as its newest sample."""
        samples = (*self.samples[-(self.max_samples - 1) :], signals)
        forecaster = self.model
        next_step = self._next_step
        if signals.ts >= next_step:
            forecaster = forecaster.updated(signals.request_rate)
            next_step = (next_step or signals.ts) + self.step_s
            if next_step <= signals.ts:  # a gap: restart the grid from now
                next_step = signals.ts + self.step_s
        return replace(self, samples=samples, forecaster=forecaster, _next_step=next_step)

    def observe(
        self, topology: Topology, now: float, router_counters: Mapping[str, int] | None = None
    ) -> SignalHistory:
        """Append the signals of ``topology`` at ``now`` (rates from the latest sample;
        ``router_counters``: a client's ``stats.snapshot()``)."""
        return self.appended(
            FleetSignals.from_topology(topology, now, self.latest, router_counters)
        )

    def since(self, ts: float) -> Iterable[FleetSignals]:
        """Samples taken at or after ``ts``, oldest first."""
        return (s for s in self.samples if s.ts >= ts)
