"""The scaling advisor: composed policies' votes → one :class:`ScalingAdvice`. Pure, like the
router: the same history (and previous advice) gives the same advice in any process.

1. Every policy votes (a count or an abstention, with a reason).
2. The highest count wins; with no count the fleet keeps its size. Scale-up is limited to
   ``max_step_up`` * current + 4 per advice (HPA's default rate).
3. Bounds: ``min_shards`` (at least ``min_per_zone`` in every known zone) and ``max_shards``.
4. Stabilisation (hysteresis): scale-up is immediate; scale-down goes only to the highest
   recommendation of the last ``scale_down_window_s`` (HPA's 5 minutes), so a dip does not
   drain a shard that the next minute needs again. Earlier recommendations come with the
   previous advice.
5. Placement (cost-aware): shards are added to the zones with fewest active shards, onto
   reserved capacity first, then on-demand, then spot (``class_limits``); shards are drained
   costliest per hour first, then those holding fewest sessions, never below a zone's
   minimum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from shardroute.errors import ConfigError
from shardroute.scaling.policies import ScalingPolicy, Vote
from shardroute.scaling.signals import CapacityClass, FleetSignals, ShardSignals, SignalHistory

__all__ = ["ScalingAdvice", "ScalingAdvisor"]

_ORDER = (CapacityClass.RESERVED, CapacityClass.ON_DEMAND, CapacityClass.SPOT)
_DEFAULT_LIMITS: Mapping[CapacityClass, int | None] = MappingProxyType(
    {CapacityClass.RESERVED: 0, CapacityClass.ON_DEMAND: None, CapacityClass.SPOT: 0}
)


@dataclass(frozen=True, slots=True)
class ScalingAdvice:
    """What the fleet should look like, and why.

    ``desired_shards`` active shards, ``per_zone`` of them by zone; to get there,
    ``additions`` (zone, capacity class) to start, or ``drain_order``: shard ids to drain,
    in order. ``reasons`` holds every vote's reason and the advisor's own (bounds,
    stabilisation). ``confidence`` (0-1): the share of shards with a fresh report times the
    votes' mean confidence. ``recommendations`` are the raw counts of the stabilisation
    window, (ts, count), for the next advice.
    """

    ts: float
    current_shards: int
    desired_shards: int
    per_zone: Mapping[str, int]
    reasons: tuple[str, ...]
    drain_order: tuple[str, ...] = ()
    additions: tuple[tuple[str, CapacityClass], ...] = ()
    confidence: float = 1.0
    votes: tuple[Vote, ...] = ()
    recommendations: tuple[tuple[float, int], ...] = field(default=(), repr=False)

    @property
    def direction(self) -> str:
        """``"up"``, ``"down"`` or ``"hold"``."""
        if self.desired_shards > self.current_shards:
            return "up"
        return "down" if self.desired_shards < self.current_shards else "hold"

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``shardroute scale-advice --json`` (docs/autoscaling.md)."""
        return {
            "ts": self.ts,
            "current_shards": self.current_shards,
            "desired_shards": self.desired_shards,
            "direction": self.direction,
            "per_zone": dict(self.per_zone),
            "additions": [{"zone": z, "capacity_class": c.value} for z, c in self.additions],
            "drain_order": list(self.drain_order),
            "confidence": self.confidence,
            "reasons": list(self.reasons),
            "votes": [
                {"policy": v.policy, "desired": v.desired, "reason": v.reason} for v in self.votes
            ],
        }


@dataclass(frozen=True, slots=True)
class ScalingAdvisor:
    """Composes scaling policies into advice (see the module doc).

    Args:
        policies: the policies, in the order their reasons are listed.
        min_shards, max_shards: bounds on active shards.
        min_per_zone: active shards every zone keeps (zones seen in the fleet plus
            ``zones``).
        zones: zones to place shards in even when none runs there yet.
        scale_down_window_s: the stabilisation window of scale-down.
        max_step_up: scale-up per advice at most to ``ceil(current * max_step_up) + 4``.
        class_limits: how many active shards each capacity class may have (None:
            unlimited); default: no reserved, unlimited on-demand, no spot.
        stale_s: a report older than this counts as not fresh (confidence).
    """

    policies: Sequence[ScalingPolicy]
    min_shards: int = 1
    max_shards: int = 64
    min_per_zone: int = 0
    zones: Sequence[str] = ()
    scale_down_window_s: float = 300.0
    max_step_up: float = 2.0
    class_limits: Mapping[CapacityClass, int | None] = field(
        default_factory=lambda: _DEFAULT_LIMITS
    )
    stale_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.policies:
            raise ConfigError("a ScalingAdvisor needs at least one policy")
        if not 0 <= self.min_shards <= self.max_shards or self.max_shards < 1:
            raise ConfigError("need 0 <= min_shards <= max_shards and max_shards >= 1")
        if self.min_per_zone < 0 or self.scale_down_window_s < 0 or self.max_step_up < 1:
            raise ConfigError("need min_per_zone >= 0, scale_down_window_s >= 0, max_step_up >= 1")

    def advise(
        self, history: SignalHistory, previous: ScalingAdvice | None = None
    ) -> ScalingAdvice:
        """Advice for the newest sample of ``history``; ``previous`` (the last advice)
        carries the stabilisation window."""
        latest = history.latest
        if latest is None:
            raise ConfigError("advise needs a history with at least one sample")
        current = latest.active_count
        votes = tuple(p.vote(history, current) for p in self.policies)
        reasons = [f"{v.policy}: {v.reason}" for v in votes]
        counts = [v.desired for v in votes if v.desired is not None]
        raw = max(counts) if counts else current
        if not counts:
            reasons.append(f"no policy asked for a change: keep {current}")
        ceiling = math.ceil(current * self.max_step_up) + 4
        if raw > ceiling:
            reasons.append(f"scale-up limited to {ceiling} this step (from {raw})")
            raw = ceiling
        zones = sorted(set(latest.zones()) | set(self.zones)) or [""]
        floor = max(self.min_shards, self.min_per_zone * len(zones))
        bounded = min(self.max_shards, max(floor, raw))
        if bounded != raw:
            reasons.append(f"bounded to [{floor}, {self.max_shards}]: {bounded}")
        window = tuple(
            (ts, n)
            for ts, n in (previous.recommendations if previous else ())
            if ts > latest.ts - self.scale_down_window_s
        )
        window = (*window, (latest.ts, bounded))
        desired = bounded
        if bounded < current:
            desired = min(current, max(n for _, n in window))
            if desired > bounded:
                reasons.append(
                    f"stabilisation: {desired} was advised within the last "
                    f"{self.scale_down_window_s:.0f} s, so no scale-down below it yet"
                )
        per_zone, additions, drains = self._place(latest, desired, zones)
        fresh = latest.fresh_share(self.stale_s)
        confidence = fresh * sum(v.confidence for v in votes) / len(votes)
        return ScalingAdvice(
            ts=latest.ts,
            current_shards=current,
            desired_shards=desired,
            per_zone=MappingProxyType(per_zone),
            reasons=tuple(reasons),
            drain_order=drains,
            additions=additions,
            confidence=round(confidence, 3),
            votes=votes,
            recommendations=window,
        )

    def _place(
        self, fleet: FleetSignals, desired: int, zones: Sequence[str]
    ) -> tuple[dict[str, int], tuple[tuple[str, CapacityClass], ...], tuple[str, ...]]:
        per_zone = {zone: 0 for zone in zones}
        per_zone.update(fleet.zones())
        active = fleet.active
        additions: list[tuple[str, CapacityClass]] = []
        if desired > len(active):
            classes = {k: sum(1 for s in active if s.capacity_class is k) for k in _ORDER}
            for _ in range(desired - len(active)):
                zone = min(per_zone, key=lambda z: (per_zone[z], z))
                per_zone[zone] = per_zone.get(zone, 0) + 1
                klass = self._next_class(classes)
                classes[klass] += 1
                additions.append((zone, klass))
            return per_zone, tuple(additions), ()
        drains: list[str] = []
        for shard in sorted(active, key=_drain_rank):
            if len(active) - len(drains) <= desired:
                break
            if per_zone.get(shard.zone, 0) <= self.min_per_zone:
                continue
            per_zone[shard.zone] -= 1
            drains.append(shard.shard_id)
        return per_zone, (), tuple(drains)

    def _next_class(self, counts: Mapping[CapacityClass, int]) -> CapacityClass:
        for klass in _ORDER:
            limit = self.class_limits.get(klass, _DEFAULT_LIMITS[klass])
            if limit is None or counts[klass] < limit:
                return klass
        return CapacityClass.ON_DEMAND  # every class at its limit: the fallback


def _drain_rank(shard: ShardSignals) -> tuple[float, int, int, str]:
    """Costliest per hour first, then fewest sessions, then reserved last."""
    keep = _ORDER.index(shard.capacity_class)
    return (-shard.cost_per_hour, shard.sessions, -keep, shard.shard_id)
