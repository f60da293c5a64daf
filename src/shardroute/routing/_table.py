"""The routing table: everything a decision reads, derived once from one snapshot.

A :class:`RouteTable` is a value computed from a topology's three immutable parts
(shard records, load reports, config) and the policy in force. The router keeps the
latest one and derives a new one when a snapshot with other parts arrives; the ring
inside it is reused while the shard records are equal. Nothing in a table changes
after it is built, except the views' caches, which memoise pure functions of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import compress
from operator import is_not
from types import MappingProxyType
from typing import Any, Protocol

from shardroute.model import LoadReport, ShardState
from shardroute.routing._plan import PlanView
from shardroute.routing._policy import RoutingPolicy
from shardroute.routing._ring import HashRing

__all__ = ["NO_LOADS", "OwnLoads", "RouteTable", "exact_total"]

SAFE = 1.0 - 1e-9  # shrinks the bound by a relative 1e-9 to absorb float rounding
UNSET: Any = object()  # identity never equal to a topology's fields


class OwnLoads(Protocol):
    """This client's own in-flight calls, as the router reads them (the transport's
    :class:`~shardroute.transport.InFlight` implements it).

    Attributes:
        counts: calls in flight per shard id.
        basis: the reported loads ``excess`` is relative to (a ``RouteTable.basis``),
            or None.
        excess: the sum over ``basis``'s shards of ``max(0, counts - reported)``: what
            this client's calls add to the reported loads.
    """

    @property
    def counts(self) -> Mapping[str, int]: ...

    @property
    def basis(self) -> Mapping[str, int] | None: ...

    @property
    def excess(self) -> int: ...


class _NoLoads:
    """No own in-flight calls (a router used on its own, or by the mover)."""

    counts: Mapping[str, int] = MappingProxyType({})
    basis: Mapping[str, int] | None = None
    excess = 0


NO_LOADS: OwnLoads = _NoLoads()


def reported(report: LoadReport | None) -> int:
    """A shard's reported load: in flight plus queued (work it has accepted)."""
    if report is None:
        return 0
    return max(0, report.inflight) + max(0, report.queue_depth)


class RouteTable:
    """The per-snapshot inputs of routing decisions, by shard index on the ring.

    ``rep`` is each shard's reported load, ``limits[priority]`` the most calls it may
    hold for that class (0 when it takes no sessions), ``floors`` the spill floor,
    ``share`` its bound per unit of total load, ``eligible`` whether it takes new
    sessions. ``basis`` maps the id of every eligible shard to its reported load and
    ``rep_total`` sums them: the total load before this client's own calls.
    """

    __slots__ = (
        "basis",
        "config_error",
        "config_obj",
        "eligible",
        "floors",
        "ids",
        "limits",
        "loads_obj",
        "policy",
        "rep",
        "rep_total",
        "ring",
        "shards_obj",
        "share",
        "topology",
        "total_weight",
        "views_zone",
        "views_zr",
        "weights",
    )

    views_zone: dict[str | None, PlanView]
    views_zr: dict[tuple[str | None, str], PlanView]
    eligible: tuple[bool, ...]
    weights: tuple[float, ...]
    total_weight: float
    share: tuple[float, ...]
    limits: Mapping[str, tuple[int, ...]]
    floors: tuple[int, ...]
    rep: tuple[int, ...]
    basis: Mapping[str, int]

    def __init__(
        self,
        ring: HashRing,
        policy: RoutingPolicy,
        loads: Mapping[str, LoadReport],
        *,
        shards_obj: object = UNSET,
        loads_obj: object = UNSET,
        config_obj: object = UNSET,
        previous: RouteTable | None = None,
        config_error: Exception | None = None,
    ) -> None:
        self.ring = ring
        self.policy = policy
        self.shards_obj = shards_obj
        self.loads_obj = loads_obj
        self.config_obj = config_obj
        self.config_error = config_error
        self.topology: object = UNSET  # the last snapshot seen to match (a shortcut)
        shards = ring.shards
        same_ring = previous is not None and previous.ring is ring
        self.ids: tuple[str, ...] = (
            previous.ids if previous is not None and same_ring else tuple(s.id for s in shards)
        )
        if (
            previous is not None
            and same_ring
            and previous.policy.max_fallbacks == (policy.max_fallbacks)
        ):
            self.views_zone = previous.views_zone
            self.views_zr = previous.views_zr
        else:
            self.views_zone = {}
            self.views_zr = {}
        if previous is not None and same_ring and previous.policy == policy:
            self.eligible = previous.eligible
            self.weights = previous.weights
            self.total_weight = previous.total_weight
            self.share = previous.share
            self.limits = previous.limits
            self.floors = previous.floors
        else:
            eligible = tuple(s.state is ShardState.ACTIVE and s.weight > 0 for s in shards)
            weights = tuple(
                float(s.weight) if ok else 0.0 for s, ok in zip(shards, eligible, strict=True)
            )
            total_weight = math.fsum(weights)
            c = policy.balance_factor
            # A hair below the exact share, so float rounding never lets a shard past
            # ceil(c * average) (the test compares with exact rationals).
            self.share = tuple(
                c * w / total_weight * SAFE if total_weight > 0 else 0.0 for w in weights
            )
            # 0 for a shard that takes no sessions: "load < limit" is then never true
            self.limits = {
                name: tuple(
                    math.floor(ceiling * s.capacity + 1e-9) if ok else 0
                    for s, ok in zip(shards, eligible, strict=True)
                )
                for name, ceiling in policy.priority_ceilings.items()
            }
            self.floors = tuple(
                math.floor(policy.spill_floor * s.capacity + 1e-9) if ok else 0
                for s, ok in zip(shards, eligible, strict=True)
            )
            self.eligible = eligible
            self.weights = weights
            self.total_weight = total_weight
        if previous is not None and same_ring and previous.loads_obj is loads_obj:
            self.rep = previous.rep
        elif previous is not None and same_ring and isinstance(previous.loads_obj, Mapping):
            self.rep = _updated_rep(self.ids, loads, previous.loads_obj, previous.rep)
        else:
            self.rep = tuple(map(reported, map(loads.get, self.ids)))
        if (
            previous is not None
            and same_ring
            and previous.rep is self.rep
            and previous.eligible is self.eligible
        ):
            self.basis = previous.basis
        else:
            self.basis = MappingProxyType(
                dict(compress(zip(self.ids, self.rep, strict=True), self.eligible))
            )
        self.rep_total: int = sum(self.basis.values())

    def matches(self, shards: object, loads: object, config: object) -> bool:
        """True when the table was derived from these three snapshot parts."""
        return shards is self.shards_obj and loads is self.loads_obj and config is self.config_obj

    def view(self, zone: str | None, region: str | None) -> PlanView:
        """The candidate order for callers in ``zone``/``region`` (built once)."""
        if region is None:
            found = self.views_zone.get(zone)
            if found is None:
                found = self.views_zone.setdefault(zone, self._shared_view(zone, None))
            return found
        found_zr = self.views_zr.get((zone, region))
        if found_zr is None:
            found_zr = self.views_zr.setdefault((zone, region), self._shared_view(zone, region))
        return found_zr

    def _shared_view(self, zone: str | None, region: str | None) -> PlanView:
        """The view kept on the ring: every table (and router) over this ring with the
        same ``max_fallbacks`` shares it and its decision caches."""
        views = self.ring.views
        key = (zone, region, self.policy.max_fallbacks)
        found: PlanView | None = views.get(key)
        if found is None:
            found = views.setdefault(key, PlanView(self.ring, zone, region))
        return found

    def load(self, s: int, counts: Mapping[str, int]) -> int:
        """The load of shard index ``s``: max(reported, own in-flight)."""
        r = self.rep[s]
        own = counts.get(self.ids[s], 0)
        return r if r > own else own


def _updated_rep(
    ids: tuple[str, ...],
    loads: Mapping[str, LoadReport],
    previous_loads: Mapping[str, LoadReport],
    previous_rep: tuple[int, ...],
) -> tuple[int, ...]:
    """The reported loads by shard index, recomputed only for the shards whose report
    object changed since the previous snapshot (a snapshot replaces the reports that
    changed and keeps the others: at 10,000 shards most of them)."""
    now, before = map(loads.get, ids), map(previous_loads.get, ids)
    changed = list(compress(range(len(ids)), map(is_not, now, before)))
    if not changed:
        return previous_rep
    rep = list(previous_rep)
    for s in changed:
        rep[s] = reported(loads.get(ids[s]))
    return tuple(rep)


def exact_total(table: RouteTable, loads: OwnLoads) -> int:
    """The total load of the eligible shards: the sum of max(reported, own in-flight).

    O(1) when ``loads`` keeps its excess over this table's basis; otherwise summed over
    the shards this client has calls on.
    """
    if loads.basis is table.basis:
        return table.rep_total + loads.excess
    total = table.rep_total
    counts = loads.counts
    if counts:
        index, rep, eligible = table.ring.index, table.rep, table.eligible
        for shard_id, n in list(counts.items()):
            s = index.get(shard_id)
            if s is not None and eligible[s] and n > rep[s]:
                total += n - rep[s]
    return total
