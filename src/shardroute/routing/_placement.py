"""The two routing policies: the ring plan, and the affinity memo wrapped around it.

:class:`RingPlan` is bounded-load consistent hashing over one :class:`RouteTable`:
home if it has room, else the next candidate in probe order. :class:`AffinityPolicy`
wraps a child plan the way cassandra-driver's ``TokenAwarePolicy(child)`` wraps its
child: a pinned session goes to its pinned shard while that shard can take it, and
everything else is the child's decision. Both only read their inputs; the memo is
written by the transport once a call went somewhere (:meth:`AffinityPolicy.settle`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from shardroute.errors import NoShardAvailable, Overloaded
from shardroute.model import EMPTY_MAPPING, Override, Shard
from shardroute.routing._decision import Decision, Reason
from shardroute.routing._memo import AffinityMemo
from shardroute.routing._plan import PlanView
from shardroute.routing._table import SAFE, OwnLoads, RouteTable, exact_total

__all__ = ["AffinityPolicy", "RingPlan"]

_PINNED_CACHE_MAX = 65_536  # cached memo decisions per view, cleared when reached


def _fallbacks(
    tb: RouteTable, view: PlanView, i: int, excluded: Collection[str], skip: int
) -> tuple[Shard, ...]:
    kmax = tb.policy.max_fallbacks
    if kmax == 0:
        return ()
    out: list[Shard] = []
    eligible, shards = tb.eligible, tb.ring.shards
    for _, s in view.walk(i):
        if s == skip or not eligible[s]:
            continue
        shard = shards[s]
        if excluded and shard.id in excluded:
            continue
        out.append(shard)
        if len(out) >= kmax:
            break
    return tuple(out)


def _may_take(
    tb: RouteTable,
    shard_id: str,
    limits: tuple[int, ...],
    loads: OwnLoads,
    excluded: Collection[str],
) -> int | None:
    """The index of ``shard_id`` when a pinned session may go there: in the table, not
    excluded, under the priority's hard ceiling (a pin gives way only there, or when its
    shard is unavailable: limits are 0 for shards that take no sessions); else None."""
    p = tb.ring.index.get(shard_id)
    if p is None or (excluded and shard_id in excluded) or tb.load(p, loads.counts) >= limits[p]:
        return None
    return p


class RingPlan:
    """Bounded-load consistent hashing (docs/routing.md, steps 1-8 and 10).

    Pure: a decision is a function of the table, the caller's view, the key's ring
    position, the priority, this client's own loads and the exclusions. Affinity
    decisions are cached per ring point in the view (they depend on nothing else).
    """

    def decide(
        self,
        tb: RouteTable,
        view: PlanView,
        i: int,
        priority: str,
        limits: tuple[int, ...],
        loads: OwnLoads,
        excluded: Collection[str],
    ) -> Decision:
        """The decision for the key at tier-0 position ``i`` of ``view``."""
        if not excluded:
            s = view.owners[i]
            load = tb.load(s, loads.counts)
            if load < limits[s] and (
                load < tb.floors[s] or load < (exact_total(tb, loads) + 1) * tb.share[s]
            ):
                return self.affinity(tb, view, i)
        # The general path: exclusions, spills, zone fallback, overload.
        ring, eligible, counts = tb.ring, tb.eligible, loads.counts
        shards = ring.shards
        home = view.owners[i]
        total, weight = exact_total(tb, loads), tb.total_weight
        for x in excluded:
            xs = ring.index.get(x)
            if xs is not None and eligible[xs]:
                total -= tb.load(xs, counts)
                weight -= tb.weights[xs]
        scale = tb.policy.balance_factor * (total + 1) / weight * SAFE if weight > 0 else 0.0
        floors = tb.floors
        kmax = tb.policy.max_fallbacks
        chosen = spare = -1
        chosen_tier = spare_tier = 0
        skipped: list[int] = []
        after: list[int] = []
        candidates = 0
        home_full = False  # the home was passed over at its priority ceiling
        for t, s in view.walk(i):
            if not eligible[s] or (excluded and shards[s].id in excluded):
                continue
            candidates += 1
            if chosen >= 0:
                after.append(s)
                if len(after) >= kmax:
                    break
                continue
            load = tb.load(s, counts)
            if load < limits[s] and (load < scale * tb.weights[s] or load < floors[s]):
                chosen, chosen_tier = s, t
                continue
            if s == home and load >= limits[s]:
                home_full = True
            if spare < 0 and load < limits[s]:
                spare, spare_tier = s, t
            skipped.append(s)
        if chosen < 0:
            if spare < 0:
                if candidates:
                    raise Overloaded(
                        f"every shard that may take {priority!r} requests is at its "
                        f"ceiling ({tb.policy.priority_ceilings[priority]:.0%} of capacity, "
                        f"{candidates} shard(s)); nothing was sent. Retry after "
                        f"{tb.policy.retry_after_s}s with backoff, or at a higher priority",
                        tb.policy.retry_after_s,
                    )
                raise NoShardAvailable(
                    f"no shard available: all {len(shards)} shard(s) are down, draining, "
                    "weightless or excluded; retry once shards register or recover"
                    if shards
                    else "no shard available: the topology is empty; retry once shards register"
                )
            # Every candidate is above c x average: only possible when reported loads
            # are inconsistent with the totals. Take the first one under its ceiling.
            chosen, chosen_tier = spare, spare_tier
            skipped.remove(spare)
        fallbacks = tuple(shards[s] for s in (after + skipped)[:kmax])
        if chosen == home:
            return Decision(shards[home], fallbacks, Reason.AFFINITY, shards[home])
        if chosen_tier > 0:
            reason = Reason.ZONE_FALLBACK
        elif not eligible[home] or shards[home].id in excluded:
            reason = Reason.FAILOVER
        else:
            reason = Reason.SPILL
        return Decision(shards[chosen], fallbacks, reason, shards[home], home_full)

    @staticmethod
    def affinity(tb: RouteTable, view: PlanView, i: int) -> Decision:
        """The home decision at position ``i`` (cached in the view)."""
        d = view.decisions[i]
        if d is None:
            s = view.owners[i]
            home = tb.ring.shards[s]
            d = Decision(home, _fallbacks(tb, view, i, (), s), Reason.AFFINITY, home)
            view.decisions[i] = d
        return d


class AffinityPolicy:
    """The affinity memo as a policy wrapped around a child plan (docs/routing.md, step 9).

    A session pinned in ``memo`` goes to its pinned shard while that shard is in the
    table, active, not excluded and under the hard ceiling of the request's priority;
    the balance bound does not apply to it. Otherwise the child decides. Reading only:
    :meth:`decide` never writes the memo; :meth:`settle` (called by the transport after
    a call succeeded) does.

    Args:
        child: the plan for sessions that are not pinned (a :class:`RingPlan`).
        memo: the pins.
        clock: monotonic seconds, the memo's clock (expiry).
    """

    def __init__(self, child: RingPlan, memo: AffinityMemo, clock: Callable[[], float]) -> None:
        self.child = child
        self.memo = memo
        self._pins = memo.pins
        self._clock = clock

    def decide(
        self,
        tb: RouteTable,
        view: PlanView,
        i: int,
        session_key: str,
        priority: str,
        limits: tuple[int, ...],
        loads: OwnLoads,
        excluded: Collection[str],
        overrides: Mapping[str, Override] = EMPTY_MAPPING,
    ) -> Decision:
        """The override's owner, else the pinned shard, else the child's decision.

        ``overrides`` (the snapshot's, filled when the client follows them): a session
        with an override goes to the owner it names on the same terms as a pin (in the
        table, active, not excluded, under the priority's hard ceiling). The override is
        what every shard agrees on, so it comes before this client's own pin.
        """
        override = overrides.get(session_key) if overrides is not EMPTY_MAPPING else None
        if override is not None:
            p = _may_take(tb, override.owner, limits, loads, excluded)
            if p is not None:
                return self.pinned(tb, view, i, p, excluded, Reason.OVERRIDE)
        pin = self._pins.get(session_key)
        if pin is not None and self._clock() < pin[2]:
            p = _may_take(tb, pin[0], limits, loads, excluded)
            if p is not None:
                return self.pinned(tb, view, i, p, excluded)
        return self.child.decide(tb, view, i, priority, limits, loads, excluded)

    @staticmethod
    def pinned(
        tb: RouteTable,
        view: PlanView,
        i: int,
        p: int,
        excluded: Collection[str],
        reason: Reason = Reason.MEMO,
    ) -> Decision:
        """The decision for position ``i`` pinned to shard index ``p`` (by the memo, or
        by an override: ``reason``)."""
        shards = tb.ring.shards
        if excluded:
            fallbacks = _fallbacks(tb, view, i, excluded, p)
            return Decision(shards[p], fallbacks, reason, shards[view.owners[i]])
        k = (i << 21) | (p << 1) | (reason is Reason.OVERRIDE)
        d = view.pinned.get(k)
        if d is None:
            fallbacks = _fallbacks(tb, view, i, (), p)
            d = Decision(shards[p], fallbacks, reason, shards[view.owners[i]])
            if len(view.pinned) >= _PINNED_CACHE_MAX:
                view.pinned.clear()
            view.pinned[k] = d
        return d

    def settle(self, session_key: str, decision: Decision) -> None:
        """A call of ``session_key`` succeeded on ``decision.shard`` (its first attempt).

        Home (``affinity``): any pin is dropped (the session was placed home again).
        ``memo``: the pin is renewed past half its TTL. ``override``: nothing (the
        override, not a pin, places the session). Anywhere else (spill, zone fallback,
        failover): the session is pinned there, where its context now is.
        """
        reason = decision.reason
        if reason is Reason.OVERRIDE:
            return
        if reason is Reason.AFFINITY:
            if session_key in self._pins:
                self.memo.discard(session_key)
        elif reason is Reason.MEMO:
            self.memo.touch(session_key)
        else:
            self.memo.put(session_key, decision.shard.id)
