"""The router: session key + priority + caller location + topology → Decision. No I/O."""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from xxhash import xxh3_64_intdigest

from shardroute.errors import ConfigError, NoShardAvailable, Overloaded
from shardroute.model import EMPTY_MAPPING, LoadReport, Shard, ShardState, Topology
from shardroute.routing._decision import Decision, Reason
from shardroute.routing._memo import AffinityMemo
from shardroute.routing._plan import PlanView
from shardroute.routing._policy import RoutingPolicy
from shardroute.routing._ring import HashRing, key_hash

__all__ = ["Router"]

_log = logging.getLogger("shardroute.routing")

_SAFE = 1.0 - 1e-9  # shrinks the bound by a relative 1e-9 to absorb float rounding
_PINNED_CACHE_MAX = 65_536  # cached memo decisions per view, cleared when reached
_UNSET: Any = object()  # identity never equal to a topology's fields: forces the first sync


class _State:
    """Everything route() reads, derived from one (shards, loads, config) triple.

    Never mutated once published, except: ``cur`` (the load accounting, changed under
    the router's lock), ``topology_obj`` (a shortcut for the identity check) and the
    views' caches, which only memoise pure functions of the ring and the policy.
    """

    __slots__ = (
        "config_obj",
        "cur",
        "eligible",
        "floors",
        "ids",
        "limits",
        "loads_obj",
        "policy",
        "rep",
        "ring",
        "shards_obj",
        "share",
        "topology_obj",
        "total_weight",
        "views_zone",
        "views_zr",
        "weights",
    )

    def __init__(
        self,
        *,
        shards_obj: object,
        loads_obj: object,
        config_obj: object,
        ring: HashRing,
        policy: RoutingPolicy,
        views_zone: dict[str | None, PlanView],
        views_zr: dict[tuple[str | None, str], PlanView],
        rep: tuple[int, ...],
        limits: Mapping[str, tuple[int, ...]],
        floors: tuple[int, ...],
        eligible: tuple[bool, ...],
        weights: tuple[float, ...],
        total_weight: float,
        share: tuple[float, ...],
    ) -> None:
        self.shards_obj = shards_obj
        self.loads_obj = loads_obj
        self.config_obj = config_obj
        self.ring = ring
        self.policy = policy
        self.views_zone = views_zone
        self.views_zr = views_zr
        self.rep = rep
        self.limits = limits
        self.floors = floors
        self.eligible = eligible
        self.ids = tuple(s.id for s in ring.shards)
        self.weights = weights
        self.total_weight = total_weight
        self.share = share
        # Mutable, under Router._lock: max(reported, own in-flight) per shard index.
        self.cur: list[int] = list(rep)
        # The last Topology object whose three parts matched this state (a shortcut).
        self.topology_obj: object = _UNSET


def _reported(report: LoadReport | None) -> int:
    if report is None:
        return 0
    return max(0, report.inflight) + max(0, report.queue_depth)


class Router:
    """Chooses the shard for each request. Pure: no I/O, no threads, no sleeping.

    One router serves one service and is shared by all threads of the client.
    ``route()`` takes no lock in the common case; ``begin``/``end``, the memo writes
    and topology changes take small locks. Call :meth:`prepare` with each new
    topology snapshot (from the thread that receives it) so the ring is built off the
    request path; ``route()`` builds it itself if it meets a snapshot first.

    Args:
        policy: the policy used when the topology carries no ``routing`` config, and the
            base that a ``routing`` config section overrides key by key.
        clock: monotonic seconds for the affinity memo's TTL (inject in tests).
    """

    def __init__(
        self,
        policy: RoutingPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_policy = policy if policy is not None else RoutingPolicy()
        self._clock = clock
        self._sync_lock = threading.Lock()  # serialises state rebuilds
        self._lock = threading.Lock()  # guards _own and _total
        self._own: dict[str, int] = {}  # this router's in-flight calls per shard id
        self._total = 0  # sum over active shards of max(reported, own): fed by begin/end
        self._config_error: ConfigError | None = None
        self._bad_config: object = _UNSET
        p = self._base_policy
        self._memo = AffinityMemo(p.memo_size, p.memo_ttl_s, clock)
        self._pins = self._memo._index  # read-only, lock-free view for the hot path
        ring = HashRing.build(EMPTY_MAPPING, p.vnodes_per_weight)
        self._state = self._derive(ring, p, EMPTY_MAPPING, _UNSET, _UNSET, _UNSET, {}, {})

    # ----------------------------------------------------------------- properties

    @property
    def policy(self) -> RoutingPolicy:
        """The active policy (from the topology's config, else the constructor's)."""
        return self._state.policy

    @property
    def config_error(self) -> ConfigError | None:
        """Why the latest ``routing`` config was rejected, or None if it was accepted."""
        return self._config_error

    @property
    def ring(self) -> HashRing:
        """The ring of the latest topology seen."""
        return self._state.ring

    @property
    def memo(self) -> AffinityMemo:
        """The affinity memo (session key → pinned shard id)."""
        return self._memo

    # ----------------------------------------------------------------- routing

    def route(
        self,
        session_key: str,
        topology: Topology,
        *,
        priority: str = "standard",
        zone: str | None = None,
        region: str | None = None,
        excluded: Collection[str] = (),
    ) -> Decision:
        """Decide which shard serves a request of ``session_key``.

        Args:
            session_key: the session (conversation) id.
            topology: the current snapshot.
            priority: the request's priority class (a key of the policy's
                ``priority_ceilings``).
            zone: the caller's zone; shards there are preferred.
            region: the caller's region; preferred next. Derived from ``zone`` if not given.
            excluded: shard ids to avoid for this call (ejected or already failed).

        Returns:
            The decision: shard, ordered fallbacks, reason and home.

        Raises:
            NoShardAvailable: the topology is empty, or every shard is down, draining,
                weightless or excluded.
            Overloaded: every shard that may take the request is at this priority's
                ceiling. Nothing was queued; retry after ``retry_after_s``.
            ConfigError: ``priority`` is not a known class.
        """
        st = self._state
        if topology is not st.topology_obj:
            if (
                topology.shards is not st.shards_obj
                or topology.loads is not st.loads_obj
                or topology.config is not st.config_obj
            ):
                st = self._sync(topology)
            st.topology_obj = topology
        try:
            limits = st.limits[priority]
        except KeyError:
            st.policy.ceiling(priority)  # raises ConfigError naming the known classes
            raise
        try:
            h = xxh3_64_intdigest(session_key.encode())
        except UnicodeEncodeError:
            h = key_hash(session_key)
        if region is None:
            view = st.views_zone.get(zone)
            if view is None:
                view = self._view(st, zone, None)
        else:
            view = st.views_zr.get((zone, region))
            if view is None:
                view = self._view(st, zone, region)
        points = view.points
        b = h >> view.shift
        i = view.starts[b]
        hi = view.starts[b + 1]
        if i != hi:
            i = bisect_left(points, h, i, hi)
        if i == len(points):
            if not points:
                raise NoShardAvailable(
                    f"no shard available for service {topology.service!r}: "
                    "the topology has no shard with weight > 0"
                )
            i = 0
        pin = self._pins.get(session_key)
        if excluded:
            pass
        elif pin is None:  # the common case: home, if it has room
            # limits and share are 0 for shards that take no sessions: no extra test
            s = view.owners[i]
            load = st.cur[s]
            if load < limits[s] and (load < (self._total + 1) * st.share[s] or load < st.floors[s]):
                d = view.decisions[i]
                if d is None:
                    d = view.decisions[i] = self._affinity(st, view, i)
                return d
        elif self._clock() < pin[1]:  # pinned, and the pin needs no refresh yet
            p = st.ring.index.get(pin[0])
            # a pin gives way only at the hard ceiling (or when its shard is unavailable)
            if p is not None and st.cur[p] < limits[p]:
                k = (i << 20) | p
                d = view.pinned.get(k)
                if d is None:
                    d = self._pinned(st, view, i, p)
                return d
        return self._place(st, view, i, session_key, priority, limits, excluded, pin is not None)

    def prepare(
        self, topology: Topology, *, zone: str | None = None, region: str | None = None
    ) -> None:
        """Adopt a new topology snapshot now: parse its config, build its ring if the
        shards changed, and the candidate order for callers in ``zone``/``region``.
        Call it from the thread that receives snapshots, so requests never wait for a
        ring build. Idempotent."""
        st = self._state
        if (
            topology.shards is not st.shards_obj
            or topology.loads is not st.loads_obj
            or topology.config is not st.config_obj
        ):
            st = self._sync(topology)
        if region is None:
            if zone not in st.views_zone:
                self._view(st, zone, None)
        elif (zone, region) not in st.views_zr:
            self._view(st, zone, region)

    # ----------------------------------------------------------------- in-flight accounting

    def begin(self, shard_id: str, n: int = 1) -> None:
        """Count ``n`` calls to ``shard_id`` as in flight (call :meth:`end` when done)."""
        with self._lock:
            own = self._own
            old = own.get(shard_id, 0)
            own[shard_id] = new = old + n
            self._adjust_total(shard_id, old, new)

    def end(self, shard_id: str, n: int = 1) -> None:
        """Count ``n`` in-flight calls to ``shard_id`` as finished. Never goes below zero."""
        with self._lock:
            own = self._own
            old = own.get(shard_id, 0)
            new = old - n
            if new > 0:
                own[shard_id] = new
            else:
                new = 0
                own.pop(shard_id, None)
            self._adjust_total(shard_id, old, new)

    @contextmanager
    def inflight(self, shard_id: str) -> Iterator[None]:
        """``with router.inflight(shard_id): call()``: begin, then end even on error."""
        self.begin(shard_id)
        try:
            yield
        finally:
            self.end(shard_id)

    def inflight_count(self, shard_id: str) -> int:
        """This router's in-flight calls to ``shard_id``."""
        return self._own.get(shard_id, 0)

    def load(self, shard_id: str) -> int:
        """The load the router uses for a shard: max(reported inflight + queue, own in-flight)."""
        st = self._state
        s = st.ring.index.get(shard_id)
        reported = st.rep[s] if s is not None else 0
        return max(reported, self._own.get(shard_id, 0))

    # ----------------------------------------------------------------- affinity memo

    def remember(self, session_key: str, shard_id: str) -> None:
        """Pin a session to a shard (after a redirect or a migration)."""
        self._memo.put(session_key, shard_id)

    def forget(self, session_key: str) -> None:
        """Drop a session's pin: its next request goes to its home (or spills again)."""
        self._memo.discard(session_key)

    def pinned(self, session_key: str) -> str | None:
        """The shard id a session is pinned to, or None."""
        return self._memo.get(session_key)

    # ----------------------------------------------------------------- internals

    def _adjust_total(self, shard_id: str, old: int, new: int) -> None:
        # Hot path (twice per call): plain comparisons instead of max().
        st = self._state
        s = st.ring.index.get(shard_id)
        if s is not None:
            r = st.rep[s]
            after = r if r > new else new
            st.cur[s] = after
            if st.eligible[s]:
                self._total += after - (r if r > old else old)

    def _load(self, st: _State, s: int) -> int:
        return st.cur[s]

    def _view(self, st: _State, zone: str | None, region: str | None) -> PlanView:
        view = PlanView(st.ring, zone, region)
        if region is None:
            return st.views_zone.setdefault(zone, view)
        return st.views_zr.setdefault((zone, region), view)

    def _fallbacks(
        self, st: _State, view: PlanView, i: int, excluded: Collection[str], skip: int
    ) -> tuple[Shard, ...]:
        kmax = st.policy.max_fallbacks
        out: list[Shard] = []
        if kmax == 0:
            return ()
        eligible, shards = st.eligible, st.ring.shards
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

    def _affinity(self, st: _State, view: PlanView, i: int) -> Decision:
        s = view.owners[i]
        home = st.ring.shards[s]
        return Decision(home, self._fallbacks(st, view, i, (), s), Reason.AFFINITY, home)

    def _pinned(self, st: _State, view: PlanView, i: int, p: int) -> Decision:
        shards = st.ring.shards
        d = Decision(
            shards[p], self._fallbacks(st, view, i, (), p), Reason.MEMO, shards[view.owners[i]]
        )
        if len(view.pinned) >= _PINNED_CACHE_MAX:
            view.pinned.clear()
        view.pinned[(i << 20) | p] = d
        return d

    def _place(
        self,
        st: _State,
        view: PlanView,
        i: int,
        key: str,
        priority: str,
        limits: tuple[int, ...],
        excluded: Collection[str],
        maybe_pinned: bool,
    ) -> Decision:
        """The general path: memo, exclusions, spills, zone fallback, overload."""
        ring, eligible = st.ring, st.eligible
        shards = ring.shards
        if excluded and not isinstance(excluded, set | frozenset | dict):
            excluded = frozenset(excluded)
        home = view.owners[i]
        pin = self._memo.get(key) if maybe_pinned else None
        if pin is not None:
            p = ring.index.get(pin)
            if (
                p is not None
                and eligible[p]
                and pin not in excluded
                and self._load(st, p) < limits[p]
            ):
                return Decision(
                    shards[p], self._fallbacks(st, view, i, excluded, p), Reason.MEMO, shards[home]
                )
        total, weight = self._total, st.total_weight
        for x in excluded:
            s = ring.index.get(x)
            if s is not None and eligible[s]:
                total -= self._load(st, s)
                weight -= st.weights[s]
        scale = st.policy.balance_factor * (total + 1) / weight * _SAFE if weight > 0 else 0.0
        floors = st.floors
        kmax = st.policy.max_fallbacks
        chosen = spare = -1
        chosen_tier = spare_tier = 0
        skipped: list[int] = []
        after: list[int] = []
        candidates = 0
        for t, s in view.walk(i):
            if not eligible[s] or (excluded and shards[s].id in excluded):
                continue
            candidates += 1
            if chosen >= 0:
                after.append(s)
                if len(after) >= kmax:
                    break
                continue
            load = self._load(st, s)
            if load < limits[s] and (load < scale * st.weights[s] or load < floors[s]):
                chosen, chosen_tier = s, t
                continue
            if spare < 0 and load < limits[s]:
                spare, spare_tier = s, t
            skipped.append(s)
        if chosen < 0:
            if spare < 0:
                if candidates:
                    raise Overloaded(
                        f"every shard that may take {priority!r} requests is at its "
                        f"ceiling ({st.policy.priority_ceilings[priority]:.0%} of capacity, "
                        f"{candidates} shard(s)); nothing was sent. Retry after "
                        f"{st.policy.retry_after_s}s with backoff, or at a higher priority",
                        st.policy.retry_after_s,
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
            if pin is not None:
                self._memo.discard(key)
            return Decision(shards[home], fallbacks, Reason.AFFINITY, shards[home])
        if chosen_tier > 0:
            reason = Reason.ZONE_FALLBACK
        elif not eligible[home] or shards[home].id in excluded:
            reason = Reason.FAILOVER
        else:
            reason = Reason.SPILL
        self._memo.put(key, shards[chosen].id)
        return Decision(shards[chosen], fallbacks, reason, shards[home])

    def _sync(self, topology: Topology) -> _State:
        """Adopt a snapshot: reparse the config, rebuild the ring, recompute loads."""
        with self._sync_lock:
            st = self._state
            if (
                topology.shards is st.shards_obj
                and topology.loads is st.loads_obj
                and topology.config is st.config_obj
            ):
                return st
            policy = st.policy
            if topology.config is not st.config_obj:
                policy = self._policy_for(topology.config, st)
            ring = st.ring
            if policy.vnodes_per_weight != ring.vnodes_per_weight or (
                topology.shards is not ring.source and dict(topology.shards) != dict(ring.source)
            ):
                t0 = time.perf_counter()
                ring = HashRing.build(topology.shards, policy.vnodes_per_weight, ring)
                _log.debug(
                    "built ring for %s: %d shards, %d points in %.1f ms",
                    topology.service,
                    len(ring),
                    len(ring.points),
                    (time.perf_counter() - t0) * 1e3,
                )
            if ring is st.ring and policy.max_fallbacks == st.policy.max_fallbacks:
                views_zone, views_zr = st.views_zone, st.views_zr
            else:
                views_zone, views_zr = {}, {}
            new = self._derive(
                ring,
                policy,
                topology.loads,
                topology.shards,
                topology.loads,
                topology.config,
                views_zone,
                views_zr,
                previous=st,
            )
            with self._lock:
                own = self._own
                new.cur = [max(r, own.get(sid, 0)) for r, sid in zip(new.rep, new.ids, strict=True)]
                self._total = sum(c for c, ok in zip(new.cur, new.eligible, strict=True) if ok)
                self._state = new
            if policy.memo_size != self._memo.maxsize or policy.memo_ttl_s != self._memo.ttl_s:
                self._resize_memo(policy)
            return new

    def _derive(
        self,
        ring: HashRing,
        policy: RoutingPolicy,
        loads: Mapping[str, LoadReport],
        shards_obj: object,
        loads_obj: object,
        config_obj: object,
        views_zone: dict[str | None, PlanView],
        views_zr: dict[tuple[str | None, str], PlanView],
        previous: _State | None = None,
    ) -> _State:
        shards = ring.shards
        if previous is not None and previous.ring is ring and previous.policy == policy:
            eligible, weights = previous.eligible, previous.weights
            total_weight, share, limits = previous.total_weight, previous.share, previous.limits
            floors = previous.floors
        else:
            eligible = tuple(
                s.state is ShardState.ACTIVE and s.weight > 0 and ring.index.get(s.id) is not None
                for s in shards
            )
            weights = tuple(
                float(s.weight) if ok else 0.0 for s, ok in zip(shards, eligible, strict=True)
            )
            total_weight = math.fsum(weights)
            c = policy.balance_factor
            # A hair below the exact share, so float rounding never lets a shard past
            # ceil(c * average) (the test compares with exact rationals).
            share = tuple(
                c * w / total_weight * _SAFE if total_weight > 0 else 0.0 for w in weights
            )
            # 0 for a shard that takes no sessions: "load < limit" is then never true
            limits = {
                name: tuple(
                    math.floor(ceiling * s.capacity + 1e-9) if ok else 0
                    for s, ok in zip(shards, eligible, strict=True)
                )
                for name, ceiling in policy.priority_ceilings.items()
            }
            floors = tuple(
                math.floor(policy.spill_floor * s.capacity + 1e-9) if ok else 0
                for s, ok in zip(shards, eligible, strict=True)
            )
        if previous is not None and previous.ring is ring and previous.loads_obj is loads_obj:
            rep = previous.rep
        else:
            rep = tuple(_reported(loads.get(s.id)) for s in shards)
        return _State(
            shards_obj=shards_obj,
            loads_obj=loads_obj,
            config_obj=config_obj,
            ring=ring,
            policy=policy,
            views_zone=views_zone,
            views_zr=views_zr,
            rep=rep,
            limits=limits,
            floors=floors,
            eligible=eligible,
            weights=weights,
            total_weight=total_weight,
            share=share,
        )

    def _policy_for(self, config: Mapping[str, Any] | None, st: _State) -> RoutingPolicy:
        if config is None:
            self._config_error = None
            return self._base_policy
        if st.config_obj is not _UNSET and st.config_obj is not None and config == st.config_obj:
            return st.policy  # same content as before: same outcome, no new log line
        try:
            policy = RoutingPolicy.from_config(config, self._base_policy)
        except ConfigError as exc:
            self._config_error = exc
            if config != self._bad_config:
                self._bad_config = config
                _log.error("rejected routing config, keeping the previous policy: %s", exc)
            return st.policy
        self._config_error = None
        if policy != st.policy:
            _log.info("routing policy changed: %s", policy)
        return policy

    def _resize_memo(self, policy: RoutingPolicy) -> None:
        old = self._memo
        memo = AffinityMemo(policy.memo_size, policy.memo_ttl_s, self._clock)
        for key, shard_id in old.items():
            memo.put(key, shard_id)
        self._memo = memo
        self._pins = memo._index
