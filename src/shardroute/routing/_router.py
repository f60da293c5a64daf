"""The router: session key + priority + caller location + snapshot → Decision. No I/O.

``Router.route`` is a function of its inputs: the topology snapshot, the session key,
the priority, the caller's zone/region, the exclusions, this client's own in-flight
calls (``loads``) and the affinity memo's pins. It writes nothing: the memo is written
by the transport after a call went somewhere (:meth:`Router.settle`,
:meth:`Router.remember`), and the in-flight counts live in the transport
(:class:`~shardroute.transport.InFlight`). What it caches (the ring, the tables, the
decisions per ring point) is derived from immutable snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping
from typing import Any

from xxhash import xxh3_64_intdigest

from shardroute.errors import ConfigError, NoShardAvailable
from shardroute.model import EMPTY_MAPPING, Topology
from shardroute.routing._decision import Decision
from shardroute.routing._memo import AffinityMemo
from shardroute.routing._placement import AffinityPolicy, RingPlan
from shardroute.routing._policy import RoutingPolicy
from shardroute.routing._ring import HashRing, key_hash
from shardroute.routing._table import NO_LOADS, UNSET, OwnLoads, RouteTable, exact_total

__all__ = ["Router"]

_log = logging.getLogger("shardroute.routing")


class Router:
    """Chooses the shard for each request. Pure: no I/O, no threads, no sleeping, and
    :meth:`route` writes nothing.

    One router serves one service and is shared by all threads of the client.
    ``route()`` takes no lock. Call :meth:`prepare` with each new topology snapshot
    (from the thread that receives it) so the ring is built off the request path;
    ``route()`` derives the table itself (memoised) if it meets a snapshot first.

    The decision is the :class:`~shardroute.routing.AffinityPolicy` (the memo) wrapped
    around the :class:`~shardroute.routing.RingPlan`; ``route()`` inlines the first
    branch of both (no pin, home has room: the cached home decision).

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
        self._sync_lock = threading.Lock()  # serialises table derivations
        self._bad_config: object = UNSET
        p = self._base_policy
        self._memo = AffinityMemo(p.memo_size, p.memo_ttl_s, clock)
        self._pins = self._memo.pins
        self._plan = AffinityPolicy(RingPlan(), self._memo, clock)
        ring = HashRing.build(EMPTY_MAPPING, p.vnodes_per_weight)
        self._table = RouteTable(ring, p, EMPTY_MAPPING)

    # ----------------------------------------------------------------- properties

    @property
    def policy(self) -> RoutingPolicy:
        """The active policy (from the topology's config, else the constructor's)."""
        return self._table.policy

    @property
    def config_error(self) -> ConfigError | None:
        """Why the latest ``routing`` config was rejected, or None if it was accepted."""
        error = self._table.config_error
        return error if isinstance(error, ConfigError) else None

    @property
    def ring(self) -> HashRing:
        """The ring of the latest topology seen."""
        return self._table.ring

    @property
    def affinity(self) -> AffinityPolicy:
        """The affinity policy (the memo wrapped around the ring plan): its ``settle`` is
        what :meth:`settle` calls, for callers that want no extra hop."""
        return self._plan

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
        loads: OwnLoads | None = None,
    ) -> Decision:
        """Decide which shard serves a request of ``session_key``. Writes nothing.

        Args:
            session_key: the session (conversation) id.
            topology: the current snapshot.
            priority: the request's priority class (a key of the policy's
                ``priority_ceilings``).
            zone: the caller's zone; shards there are preferred.
            region: the caller's region; preferred next. Derived from ``zone`` if not given.
            excluded: shard ids to avoid for this call (ejected or already failed).
            loads: this client's own calls in flight (the transport's ``InFlight``);
                None counts reported loads only.

        Returns:
            The decision: shard, ordered fallbacks, reason and home.

        Raises:
            NoShardAvailable: the topology is empty, or every shard is down, draining,
                weightless or excluded.
            Overloaded: every shard that may take the request is at this priority's
                ceiling. Nothing was queued; retry after ``retry_after_s``.
            ConfigError: ``priority`` is not a known class.
        """
        tb = self._table
        if topology is not tb.topology:
            tb = self._table_for(topology)
        try:
            limits = tb.limits[priority]
        except KeyError:
            tb.policy.ceiling(priority)  # raises ConfigError naming the known classes
            raise
        try:
            h = xxh3_64_intdigest(session_key.encode())
        except UnicodeEncodeError:
            h = key_hash(session_key)
        view = tb.views_zone.get(zone) if region is None else tb.views_zr.get((zone, region))
        if view is None:
            view = tb.view(zone, region)
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
        if loads is None:
            loads = NO_LOADS
        overrides = topology.overrides  # EMPTY_MAPPING unless the client follows them
        if not excluded:
            if session_key not in self._pins and (
                overrides is EMPTY_MAPPING or session_key not in overrides
            ):  # the common case: home, if it has room
                # limits and share are 0 for shards that take no sessions: no extra test
                s = view.owners[i]
                r = tb.rep[s]
                own = loads.counts.get(tb.ids[s], 0)
                load = r if r > own else own
                if load < limits[s] and (
                    load < tb.floors[s] or load < (exact_total(tb, loads) + 1) * tb.share[s]
                ):
                    d = view.decisions[i]
                    return d if d is not None else RingPlan.affinity(tb, view, i)
        elif not isinstance(excluded, set | frozenset | dict):
            excluded = frozenset(excluded)
        return self._plan.decide(
            tb, view, i, session_key, priority, limits, loads, excluded, overrides
        )

    def prepare(
        self, topology: Topology, *, zone: str | None = None, region: str | None = None
    ) -> None:
        """Adopt a new topology snapshot now: parse its config, build its ring if the
        shards changed, the candidate order for callers in ``zone``/``region``, and
        resize the memo if the config changed its size or TTL. Call it from the thread
        that receives snapshots, so requests never wait for a ring build. Idempotent."""
        tb = self._table_for(topology)
        tb.view(zone, region)
        policy = tb.policy
        if policy.memo_size != self._memo.maxsize or policy.memo_ttl_s != self._memo.ttl_s:
            self._memo.resize(policy.memo_size, policy.memo_ttl_s)

    def basis(self, topology: Topology) -> Mapping[str, int]:
        """The reported load of every shard of ``topology`` that takes sessions: what
        ``InFlight.rebase`` keeps its excess relative to (see ``OwnLoads``)."""
        return self._table_for(topology).basis

    def load(self, shard_id: str, loads: OwnLoads | None = None) -> int:
        """The load the router uses for a shard: max(reported inflight + queue, own
        in-flight from ``loads``), on the latest topology seen."""
        tb = self._table
        own = (loads or NO_LOADS).counts.get(shard_id, 0)
        s = tb.ring.index.get(shard_id)
        reported = tb.rep[s] if s is not None else 0
        return max(reported, own)

    # ----------------------------------------------------------------- affinity memo

    def settle(self, session_key: str, decision: Decision) -> None:
        """The transport's report that a call of ``session_key`` succeeded on
        ``decision.shard`` at its first attempt: pins the session when that was not its
        home, renews a pin it used, drops a pin it no longer needs (see
        :meth:`AffinityPolicy.settle <shardroute.routing.AffinityPolicy.settle>`)."""
        self._plan.settle(session_key, decision)

    def remember(self, session_key: str, shard_id: str) -> None:
        """Pin a session to a shard (after a failover, a redirect or a migration)."""
        self._memo.put(session_key, shard_id)

    def forget(self, session_key: str) -> None:
        """Drop a session's pin: its next request goes to its home (or spills again)."""
        self._memo.discard(session_key)

    def pinned(self, session_key: str) -> str | None:
        """The shard id a session is pinned to, or None (reads only)."""
        return self._memo.peek(session_key)

    # ----------------------------------------------------------------- internals

    def _table_for(self, topology: Topology) -> RouteTable:
        """The table of ``topology``: the latest one if it was derived from the same
        parts, else a new one (the ring reused while the shard records are equal)."""
        tb = self._table
        if not tb.matches(topology.shards, topology.loads, topology.config):
            with self._sync_lock:
                tb = self._table
                if not tb.matches(topology.shards, topology.loads, topology.config):
                    tb = self._derive(topology, tb)
                    self._table = tb
        tb.topology = topology
        return tb

    def _derive(self, topology: Topology, previous: RouteTable) -> RouteTable:
        policy, error = previous.policy, previous.config_error
        if topology.config is not previous.config_obj:
            policy, error = self._policy_for(topology.config, previous)
        ring = previous.ring
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
        return RouteTable(
            ring,
            policy,
            topology.loads,
            shards_obj=topology.shards,
            loads_obj=topology.loads,
            config_obj=topology.config,
            previous=previous,
            config_error=error,
        )

    def _policy_for(
        self, config: Mapping[str, Any] | None, previous: RouteTable
    ) -> tuple[RoutingPolicy, Exception | None]:
        if config is None:
            return self._base_policy, None
        prev_config = previous.config_obj
        if prev_config is not UNSET and prev_config is not None and config == prev_config:
            # same content as before: same outcome, no new log line
            return previous.policy, previous.config_error
        try:
            policy = RoutingPolicy.from_config(config, self._base_policy)
        except ConfigError as exc:
            if config != self._bad_config:
                self._bad_config = config
                _log.error(
                    "the routing config in etcd was rejected (%s): this client keeps routing "
                    "with its previous policy; no data is at risk; fix the config "
                    "(docs/routing.md)",
                    exc,
                )
            return previous.policy, exc
        if policy != previous.policy:
            _log.info("routing policy changed: %s", policy)
        return policy, None
