"""Scaling policies: small objects with one method, :meth:`ScalingPolicy.vote`, composed by
:class:`~shardroute.scaling.advisor.ScalingAdvisor`. Each returns a :class:`Vote` (a shard
count, or an abstention) with a reason a person can read. Pure: no I/O, no clock.

How votes combine (the advisor): the highest count wins, as Kubernetes' HPA takes the highest
of its metrics' proposals. So a policy that *abstains* lets the others scale down, and one
that votes the current count *holds* the fleet where it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from shardroute.errors import ConfigError
from shardroute.scaling.signals import FleetSignals, SignalHistory

__all__ = [
    "CostAwarePolicy",
    "LatencyPolicy",
    "PredictivePolicy",
    "QueuePolicy",
    "ScalingPolicy",
    "SpillPolicy",
    "UtilisationPolicy",
    "Vote",
]


@dataclass(frozen=True, slots=True)
class Vote:
    """One policy's proposal: ``desired`` shards (None: abstains) and why.

    ``confidence`` (0-1) says how much data stood behind it (a forecaster still learning
    its season is less sure).
    """

    policy: str
    desired: int | None
    reason: str
    confidence: float = 1.0


class ScalingPolicy(Protocol):
    """A scaling policy: from the history and the current active shard count, a vote."""

    @property
    def name(self) -> str:
        """Short name used in reasons."""
        ...

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """The policy's vote; ``history`` has at least one sample."""
        ...


def _latest(history: SignalHistory) -> FleetSignals:
    latest = history.latest
    if latest is None:
        raise ConfigError("a vote needs a history with at least one sample")
    return latest


def _hpa(current: int, ratio: float) -> int:
    """Kubernetes' formula: ceil(current * metric / target)."""
    return max(0, math.ceil(current * ratio - 1e-9))


def _proportional(name: str, current: int, ratio: float, why: str, at_least: int = 0) -> Vote:
    """A vote for ``ceil(current * ratio)`` (at least ``at_least``), the formula in the reason."""
    desired = max(at_least, _hpa(current, ratio))
    return Vote(name, desired, f"{why}: ceil({current} * {ratio:.2f}) = {desired}")


def _covers(history: SignalHistory, window_s: float) -> tuple[FleetSignals, ...] | None:
    """The samples of the last ``window_s`` seconds, or None when the history is shorter."""
    latest = _latest(history)
    if history.samples[0].ts > latest.ts - window_s:
        return None
    return tuple(history.since(latest.ts - window_s))


@dataclass(frozen=True, slots=True)
class UtilisationPolicy:
    """Kubernetes' HPA on utilisation (in-flight over capacity): ``ceil(current * u / target)``,
    no change while ``u / target`` is within ``tolerance`` of 1. Votes both ways."""

    target: float = 0.6
    tolerance: float = 0.1
    name: str = "utilisation"

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """See the class."""
        util = _latest(history).utilisation
        ratio = util / self.target
        if current == 0:
            return Vote(self.name, None, "no active shard to measure utilisation on")
        if abs(ratio - 1) <= self.tolerance:
            return Vote(
                self.name,
                current,
                f"utilisation {util:.0%} within {self.tolerance:.0%} of the {self.target:.0%} "
                f"target: keep {current}",
            )
        why = f"utilisation {util:.0%} vs target {self.target:.0%}"
        return _proportional(self.name, current, ratio, why)


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """The HPA formula on queue depth per active shard: above ``target_per_shard`` (beyond the
    tolerance), ``ceil(current * queue / target)``. Only scales up: an empty queue does not
    prove the fleet is too big, so it abstains."""

    target_per_shard: float = 2.0
    tolerance: float = 0.1
    name: str = "queue"

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """See the class."""
        if self.target_per_shard <= 0:
            raise ConfigError("target_per_shard must be > 0")
        queue = _latest(history).queue_per_shard
        ratio = queue / self.target_per_shard
        if current == 0 or ratio <= 1 + self.tolerance:
            return Vote(
                self.name,
                None,
                f"queue {queue:.1f}/shard at or under the target {self.target_per_shard:g}",
            )
        why = f"queue {queue:.1f}/shard above the target {self.target_per_shard:g}"
        return _proportional(self.name, current, ratio, why, current + 1)


@dataclass(frozen=True, slots=True)
class LatencyPolicy:
    """p95 turn duration against an SLO.

    - Above ``slo_ms`` in each of the last ``intervals`` samples: scale up in proportion
      (``ceil(current * p95 / slo)``, at least one more, at most double).
    - Below ``low_ratio * slo_ms`` in every sample of the last ``quiet_s`` seconds: abstains,
      which allows the other policies to scale down.
    - Otherwise: holds the current count (no scale-down while latency is near its SLO).
    """

    slo_ms: float
    intervals: int = 3
    low_ratio: float = 0.5
    quiet_s: float = 300.0
    name: str = "latency"

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """See the class."""
        if self.slo_ms <= 0 or self.intervals < 1:
            raise ConfigError("slo_ms must be > 0 and intervals >= 1")
        p95 = _latest(history).latency_ms_p95
        recent = history.samples[-self.intervals :]
        if len(recent) == self.intervals and all(s.latency_ms_p95 > self.slo_ms for s in recent):
            ratio = min(2.0, p95 / self.slo_ms)
            why = (
                f"p95 {p95:.0f} ms over the {self.slo_ms:.0f} ms SLO for {self.intervals} intervals"
            )
            return _proportional(self.name, current, ratio, why, current + 1)
        quiet = _covers(history, self.quiet_s)
        low = self.low_ratio * self.slo_ms
        if quiet is not None and all(s.latency_ms_p95 < low for s in quiet):
            return Vote(
                self.name,
                None,
                f"p95 under {low:.0f} ms for {self.quiet_s:.0f} s: scale-down allowed",
            )
        return Vote(
            self.name,
            current,
            f"p95 {p95:.0f} ms near the {self.slo_ms:.0f} ms SLO: hold {current}",
        )


@dataclass(frozen=True, slots=True)
class PredictivePolicy:
    """Forecasts the fleet's request rate ``horizon_s`` ahead (Holt-Winters on the history's
    rate, :mod:`shardroute.scaling.forecast`) and votes the shards the forecast peak needs at
    ``target`` utilisation, so capacity is ready before the peak.

    ``horizon_s`` must be at least the time a new shard takes to become ready.
    ``per_shard_rate``: calls per second one shard serves at full utilisation; None
    estimates it from the latest sample by Little's law (rate * capacity / in-flight).

    Reactive fallback (``surprise_errors``): a forecast knows only what recurs. When the
    latest observed rate is above the forecast peak by more than ``surprise_errors`` times
    the forecaster's mean one-step miss (a burst, or load the season never showed), the
    vote sizes for the observed rate instead, at once, as a reactive policy would: the
    forecaster, fed once a ``step_s`` and smoothing, would follow the jump only over
    several steps. None turns the fallback off.
    """

    horizon_s: float = 120.0
    per_shard_rate: float | None = None
    target: float = 0.7
    surprise_errors: float | None = 3.0
    name: str = "predictive"

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """See the class."""
        if self.horizon_s <= 0 or not 0 < self.target <= 1:
            raise ConfigError("horizon_s must be > 0 and target in (0, 1]")
        if self.surprise_errors is not None and not self.surprise_errors >= 0:
            raise ConfigError("surprise_errors must be >= 0 or None")
        model = history.model
        if model.count < 2:
            return Vote(self.name, None, "too little history to forecast", 0.0)
        per_shard = self.per_shard_rate
        latest = _latest(history)
        estimated = per_shard is None
        if per_shard is None:
            if latest.inflight == 0 or latest.request_rate <= 0 or latest.active_count == 0:
                return Vote(self.name, None, "no traffic to estimate a shard's rate from", 0.5)
            per_shard = latest.request_rate * latest.capacity / latest.inflight
            per_shard /= latest.active_count
        steps = max(1, math.ceil(self.horizon_s / history.step_s))
        peak = model.peak(steps)
        how = "Holt-Winters" if model.seasonal else "Holt (season still learning)"
        scale = max(abs(model.level), 1e-9)
        confidence = max(0.0, 1.0 - model.error / scale) * (1.0 if model.seasonal else 0.6)
        each = (
            f"at {per_shard:.1f} calls/s each{' (estimated)' if estimated else ''} "
            f"and {self.target:.0%} target"
        )
        rate, k = latest.request_rate, self.surprise_errors
        if k is not None and rate > peak + k * model.error:
            desired = math.ceil(rate / (per_shard * self.target) - 1e-9)
            return Vote(
                self.name,
                desired,
                f"observed {rate:.1f} calls/s, above the {how} peak of {peak:.1f} by more than "
                f"{k:g} x its mean miss ({model.error:.1f}): reactive fallback, "
                f"{desired} shards {each}",
                round(confidence, 3),
            )
        desired = math.ceil(peak / (per_shard * self.target) - 1e-9)
        return Vote(
            self.name,
            desired,
            f"{how} forecasts a peak of {peak:.1f} calls/s within {self.horizon_s:.0f} s; "
            f"{desired} shards {each}",
            round(confidence, 3),
        )


@dataclass(frozen=True, slots=True)
class CostAwarePolicy:
    """When utilisation stays under ``low_water`` for ``window_s``, votes
    ``ceil(current * peak utilisation / target)`` (never below 1): the fleet sheds what it
    does not use. Otherwise abstains. Which shards go (costliest, fewest sessions first,
    never below a zone's minimum) and which capacity class comes first on scale-up are the
    advisor's placement rules."""

    low_water: float = 0.3
    target: float = 0.6
    window_s: float = 600.0
    name: str = "cost"

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """See the class."""
        if not 0 < self.low_water < self.target <= 1:
            raise ConfigError("need 0 < low_water < target <= 1")
        window = _covers(history, self.window_s)
        if window is None or current == 0:
            return Vote(self.name, None, f"less than {self.window_s:.0f} s of history")
        peak = max(s.utilisation for s in window)
        if peak >= self.low_water:
            return Vote(
                self.name,
                None,
                f"utilisation reached {peak:.0%} in the last {self.window_s:.0f} s",
            )
        desired = max(1, _hpa(current, peak / self.target))
        return Vote(
            self.name,
            desired,
            f"utilisation under {self.low_water:.0%} (peak {peak:.0%}) for "
            f"{self.window_s:.0f} s: {desired} shards are enough at {self.target:.0%}",
        )


@dataclass(frozen=True, slots=True)
class SpillPolicy:
    """Router-side: when more than ``max_share`` of a client's routing decisions spilled
    past a full home, crossed zones, were refused as ``Overloaded`` or failed, in each of
    the last ``intervals`` samples (at least ``min_calls`` decisions each), one shard more:
    the homes are hot even if the shards' reports have not said so yet. The reason also
    gives the share of decisions at a priority ceiling
    (:attr:`~shardroute.scaling.RouterSignals.ceiling_share`). Abstains without router
    signals (a sampler with no client)."""

    max_share: float = 0.25
    intervals: int = 3
    min_calls: int = 20
    name: str = "spill"

    def vote(self, history: SignalHistory, current: int) -> Vote:
        """See the class."""
        if not 0 < self.max_share < 1 or self.intervals < 1:
            raise ConfigError("max_share must be in (0, 1) and intervals >= 1")
        recent = [s.router for s in history.samples[-self.intervals :]]
        if len(recent) < self.intervals or any(r is None for r in recent):
            return Vote(self.name, None, "no router signals (no client in this process)")
        routers = [r for r in recent if r is not None]
        shares = [r.spill_share + r.overloaded_share + r.error_share for r in routers]
        decisions = min(r.decisions for r in routers)
        last = routers[-1]
        seen = (
            f"{last.ceiling_share:.0%} of decisions at a priority ceiling "
            f"({last.overloaded} refused as Overloaded)"
        )
        if decisions >= self.min_calls and min(shares) > self.max_share:
            return Vote(
                self.name,
                current + 1,
                f"{min(shares):.0%}+ of decisions spilled, were refused or failed in "
                f"{self.intervals} intervals (limit {self.max_share:.0%}), {seen}: "
                "one more shard",
            )
        return Vote(self.name, None, f"spills, refusals and errors at {shares[-1]:.0%}; {seen}")
