"""Acting on advice: the :class:`Actuator` protocol, the pure :func:`reconcile` step, the
:class:`Autoscaler` loop and the ``shardroute_desired_shards`` gauge.

The gauge (and the fleet signals beside it, :data:`FLEET_GAUGES`) is an OpenTelemetry
observable gauge on the ``shardroute`` meter (the API only: the application picks the SDK
and exporter; with the Prometheus exporter it is scraped as
``shardroute_desired_shards{zone="..."}``). They live here until the ``shardroute.telemetry``
module owns every instrument; then they move there under the same names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import metrics

from shardroute.discovery.source import TopologySource
from shardroute.errors import ConfigError, ShardRouteError
from shardroute.scaling.advisor import ScalingAdvice, ScalingAdvisor
from shardroute.scaling.signals import CapacityClass, FleetSignals, RouterSignals, SignalHistory

__all__ = [
    "DESIRED_SHARDS_GAUGE",
    "FLEET_GAUGES",
    "ROUTER_GAUGES",
    "Actions",
    "Actuator",
    "Autoscaler",
    "DesiredShardsGauge",
    "RebalanceHook",
    "reconcile",
]

log = logging.getLogger("shardroute.scaling")

DESIRED_SHARDS_GAUGE = "shardroute_desired_shards"
"""The gauge's name (one point per zone, attribute ``zone``)."""


class RebalanceHook(Protocol):
    """What the autoscaler runs after a shard joined or returned (a
    :class:`~shardroute.scaling.rebalance.Rebalancer` fits)."""

    def run(self) -> Any:
        """Move sessions toward balance; returns what it did."""
        ...


class Actuator(Protocol):
    """Starts and drains shards. Called from the autoscaler's thread, one call at a time.

    ``add_shard`` starts a shard in ``zone`` on ``capacity_class`` capacity and returns its
    id (it need not be registered yet: the autoscaler counts it as pending until it shows
    up in the topology). ``drain_shard`` asks a shard to drain: move its sessions to other
    shards, then deregister and stop. It must not kill the shard.
    """

    def add_shard(self, zone: str, capacity_class: CapacityClass) -> str:
        """Start one shard; its id."""
        ...

    def drain_shard(self, shard_id: str) -> None:
        """Begin draining one shard (returns once the drain started)."""
        ...


@dataclass(frozen=True, slots=True)
class Actions:
    """What to do now: shards to add (zone, class) and shard ids to drain."""

    add: tuple[tuple[str, CapacityClass], ...] = ()
    drain: tuple[str, ...] = ()


def reconcile(advice: ScalingAdvice, pending: int = 0) -> Actions:
    """The actions that move the fleet toward ``advice``, given ``pending`` shards already
    started and not yet active (they count toward the advice's additions; when the advice
    falls, fewer active shards are drained by as many). Pure."""
    if advice.additions:
        return Actions(add=advice.additions[pending:])
    surplus = advice.current_shards + pending - advice.desired_shards
    return Actions(drain=advice.drain_order[: max(0, surplus)])


FLEET_GAUGES: Mapping[str, tuple[str, str, Callable[[FleetSignals], float]]] = {
    "shardroute_fleet_active_shards": ("{shard}", "Active shards", lambda f: f.active_count),
    "shardroute_fleet_utilisation": (
        "1",
        "In-flight calls over capacity, active shards",
        lambda f: f.utilisation,
    ),
    "shardroute_fleet_queue_per_shard": (
        "{call}",
        "Queued calls per active shard",
        lambda f: f.queue_per_shard,
    ),
    "shardroute_fleet_latency_p95": (
        "ms",
        "p95 turn duration of the active shards, weighted by in-flight calls",
        lambda f: f.latency_ms_p95,
    ),
    "shardroute_fleet_request_rate": ("{call}/s", "Calls per second", lambda f: f.request_rate),
}
"""The fleet signals the gauge also reports (name: unit, description, value)."""

ROUTER_GAUGES: Mapping[str, tuple[str, str, Callable[[RouterSignals], float]]] = {
    "shardroute_router_spill_share": (
        "1",
        "Share of the client's routing decisions that spilled or crossed zones",
        lambda r: r.spill_share,
    ),
    "shardroute_router_ceiling_share": (
        "1",
        "Share of routing decisions at a priority ceiling (home at it, or refused)",
        lambda r: r.ceiling_share,
    ),
    "shardroute_router_overloaded_share": (
        "1",
        "Share of routing decisions refused as Overloaded",
        lambda r: r.overloaded_share,
    ),
    "shardroute_router_failovers": (
        "{call}",
        "Calls that succeeded on a fallback in the last interval",
        lambda r: r.failovers,
    ),
}
"""The router-side signals the gauge reports when the autoscaler has a client's stats
(``Autoscaler(router_stats=...)``): nothing is observed without them."""


class DesiredShardsGauge:
    """The ``shardroute_desired_shards`` observable gauge (attribute ``zone``), the fleet
    signals (:data:`FLEET_GAUGES`, no attribute) and the router signals
    (:data:`ROUTER_GAUGES`, when the sample has them) on ``metrics.get_meter("shardroute")``,
    reporting the latest advice and sample given to :meth:`publish`. Thread-safe."""

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        self._per_zone: Mapping[str, int] = {}
        self._fleet: FleetSignals | None = None
        meter = meter or metrics.get_meter("shardroute")
        meter.create_observable_gauge(
            DESIRED_SHARDS_GAUGE,
            callbacks=[self._observe],
            unit="{shard}",
            description="Active shards the scaling advisor wants, by zone",
        )
        for name, (unit, description, value) in FLEET_GAUGES.items():
            meter.create_observable_gauge(
                name, callbacks=[self._fleet_callback(value)], unit=unit, description=description
            )
        for name, (unit, description, read) in ROUTER_GAUGES.items():
            meter.create_observable_gauge(
                name,
                callbacks=[self._fleet_callback(_of_router(read))],
                unit=unit,
                description=description,
            )

    def publish(self, advice: ScalingAdvice, fleet: FleetSignals | None = None) -> None:
        """Report ``advice`` (and the sample ``fleet`` it came from) from now on."""
        self._per_zone = dict(advice.per_zone)
        if fleet is not None:
            self._fleet = fleet

    def _observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(n, {"zone": zone}) for zone, n in self._per_zone.items()]

    def _fleet_callback(
        self, value: Callable[[FleetSignals], float | None]
    ) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
        def observe(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            fleet = self._fleet
            seen = None if fleet is None else value(fleet)
            return [] if seen is None else [metrics.Observation(seen)]

        return observe


def _of_router(read: Callable[[RouterSignals], float]) -> Callable[[FleetSignals], float | None]:
    """A fleet gauge's value from the sample's router signals (None without them)."""
    return lambda fleet: None if fleet.router is None else read(fleet.router)


class Autoscaler:
    """Observes the topology, asks the advisor, and acts through the actuator.

    Args:
        advisor: the advisor.
        actuator: starts and drains shards (None: advice only, for the gauge and the CLI).
        source: a started topology source of the service.
        interval_s: seconds between two steps (and samples of the history).
        history: the starting history (for example one filled from past days).
        gauge: publishes each advice (None: no gauge).
        pending_timeout_s: a started shard not active after this long stops counting as
            pending.
        rebalancer: run once after each round in which a shard became active (one this
            autoscaler started, or one that returned: killed and restarted under its id),
            so it takes its share of the sessions (sessions pinned elsewhere by overrides
            would otherwise stay there); its moves are counted in
            :attr:`sessions_rebalanced`.
        router_stats: a client's ``stats.snapshot`` (``client.stats.snapshot``): each
            sample then carries the router-side signals (:class:`RouterSignals`: spills,
            errors, failovers) that :class:`SpillPolicy` reads.
        clock: unix time (tests pass their own).

    :meth:`step` runs one round and may be called directly; :meth:`start` runs rounds in a
    daemon thread until :meth:`close`. A failed actuator call is logged and retried at the
    next round; it never stops the loop.
    """

    def __init__(
        self,
        advisor: ScalingAdvisor,
        actuator: Actuator | None,
        source: TopologySource,
        *,
        interval_s: float = 15.0,
        history: SignalHistory | None = None,
        gauge: DesiredShardsGauge | None = None,
        pending_timeout_s: float = 300.0,
        rebalancer: RebalanceHook | None = None,
        router_stats: Callable[[], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0 or pending_timeout_s <= 0:
            raise ConfigError("interval_s and pending_timeout_s must be > 0")
        self.advisor = advisor
        self.actuator = actuator
        self.source = source
        self.interval_s = interval_s
        self.history = history if history is not None else SignalHistory()
        self.gauge = gauge
        self.pending_timeout_s = pending_timeout_s
        self.clock = clock
        self.rebalancer = rebalancer
        self.router_stats = router_stats
        self.sessions_rebalanced = 0
        self.advice: ScalingAdvice | None = None
        self.scale_ups = 0
        self.scale_downs = 0
        self._pending: dict[str, float] = {}
        self._active: set[str] | None = None
        self._draining: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Shards started and not active yet."""
        return len(self._pending)

    def step(self) -> ScalingAdvice:
        """Sample the topology, advise, act; returns the advice."""
        now = self.clock()
        topology = self.source.current()
        counters = self.router_stats() if self.router_stats is not None else None
        self.history = self.history.observe(topology, now, counters)
        active = {s.id for s in topology.shards.values() if s.available}
        joined = active - self._active if self._active is not None else set()
        self._active = active
        self._pending = {
            sid: ts
            for sid, ts in self._pending.items()
            if sid not in active and now - ts < self.pending_timeout_s
        }
        self._draining &= set(topology.shards)
        advice = self.advisor.advise(self.history, self.advice)
        self.advice = advice
        if self.gauge is not None:
            self.gauge.publish(advice, self.history.latest)
        if self.actuator is not None:
            self._act(reconcile(advice, self.pending), now)
        if joined and self.rebalancer is not None:
            self._rebalance(joined)
        return advice

    def _rebalance(self, joined: set[str]) -> None:
        assert self.rebalancer is not None
        try:
            result = self.rebalancer.run()
        except ShardRouteError as exc:
            log.warning(
                "rebalancing sessions onto %s failed (%s): the sessions stay where they are "
                "and the new shards fill with new sessions; no data is at risk; nothing to do",
                sorted(joined),
                exc,
            )
            return
        moved = getattr(result, "moved", 0)
        self.sessions_rebalanced += moved
        log.info("rebalanced after %s joined: %d sessions moved", sorted(joined), moved)

    def _act(self, actions: Actions, now: float) -> None:
        assert self.actuator is not None
        for zone, klass in actions.add:
            try:
                shard_id = self.actuator.add_shard(zone, klass)
            except ShardRouteError as exc:
                log.warning(
                    "the autoscaler could not add a shard in zone %r (%s): it tries again at "
                    "its next round; no data is at risk; check the actuator",
                    zone,
                    exc,
                )
                continue
            self._pending[shard_id] = now
            self.scale_ups += 1
            log.info("added shard %s in zone %r (%s)", shard_id, zone, klass.value)
        for shard_id in actions.drain:
            if shard_id in self._draining:
                continue
            try:
                self.actuator.drain_shard(shard_id)
            except ShardRouteError as exc:
                log.warning(
                    "the autoscaler could not drain shard %s (%s): it keeps serving, and the "
                    "autoscaler tries again at its next round; no data is at risk",
                    shard_id,
                    exc,
                )
                continue
            self._draining.add(shard_id)
            self.scale_downs += 1
            log.info("draining shard %s", shard_id)

    def start(self) -> Autoscaler:
        """Run :meth:`step` every ``interval_s`` in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="shardroute-autoscaler", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except ShardRouteError as exc:
                log.warning(
                    "an autoscaler round failed (%s): the fleet stays as it is until the "
                    "next round; no data is at risk; check that etcd is reachable",
                    exc,
                )
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        """Stop the loop (waits for the current round). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Autoscaler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
