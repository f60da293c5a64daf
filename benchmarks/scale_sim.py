"""Scale simulation: the real Router and ring (no network), up to 10,000 shards. One JSON line.

    python benchmarks/scale_sim.py          # 1,000 shards, 100k sessions, 100 replicas
    python benchmarks/scale_sim.py --full   # 10,000 shards in 3 zones, 1M sessions (minutes)

Everything but the JSON line goes to stderr. What it measures, and how:

1. **One replica** (``build_*``, ``route_*``), in a fresh subprocess so the figures are
   one process's own: ``Router.prepare`` of the snapshot (ring, table and the view of a
   caller with no zone) timed (wall and CPU: on a shared machine the CPU time is the
   figure to trust) and its resident memory growth (``build_mb``); then
   ``route(key, topology)`` p50 over a Zipf request stream over the sessions (batches of
   200, median of the batch means, after one warm-up pass; wall time, and the process's
   CPU time as ``route_cpu_us_p50``, which a busy machine inflates less), with every shard reporting
   40-60 % of its capacity in flight (both load checks run, no home is full), and the
   RSS growth after routing (``warm_mb``: the decision caches). ``baseline_160``: the
   same with ``vnodes_per_weight`` 160, the default (``--no-baseline`` skips it).
2. **100 replicas** (``max_over_avg``, ``agreement``): each replica is a ``Router``
   with its own affinity memo and its own ``Heard`` (in flight), all fed the same snapshots. They
   run in this one process and, fed the very same snapshot objects, share the ring and
   its per-location views and decision caches (pure values; a real process builds its
   own, which part 1 measures). Sessions have a Zipf popularity (1 / rank**1.1); each
   keeps calls in flight in proportion to it, scaled so the hottest keeps
   ``--max-session-calls`` (8) and at least 1. Placement: the sessions, in random order,
   are each placed by one route() at a random replica and then hold their calls there
   (``Heard.begin`` at that replica: an ``InFlight`` with trailers); every
   ``--report-every`` placements (default: one per shard) a snapshot with every shard's
   exact load is published, so the reports lag in between and each replica also sees its
   own calls and, unless ``--no-trailers``, the load trailer of each response it got since
   (the placed shard's true load, as issue 14's clients read it: see ``Heard``).
   ``max_over_avg``: the largest shard load over the average at the end (bounded loads, c =
   ``--balance-factor``, 1.25 by default); ``max_over_avg_homes``: the same with every
   session at its ring home (plain consistent hashing), the same-run baseline. Traffic:
   ``--requests`` requests drawn by popularity, each at a random replica. A first attempt
   at a shard other than the one holding the session follows the shards' ownership rules
   (docs/migration.md, "Ownership"): one the replica placed there on purpose (a spill, zone
   fallback or failover) is taken over there (the session moves, with its calls, and gets
   an override: ``taken_over_share``; snapshots go on every ``--report-every`` requests
   while takeovers happen), any other is redirected (the replica remembers, as the
   transport does: ``redirected_share``); otherwise the replica settles.
   ``--no-takeovers`` redirects them all (the model until session 7, which overstated
   the disagreement: see docs/benchmarks.md). ``max_over_avg_after_traffic``: max/avg
   once the takeovers moved their sessions. On every ``--sample-every``-th
   request all replicas route the same key: ``agreement`` is the share of those on which
   all agree; ``redirected_share`` the share of requests redirected. Each sample on which
   they disagree is counted by cause (``disagree_*``, see ``SPLIT``): "spill or not" (some
   replicas send it home, some elsewhere) or "where to" (all off home, to different
   shards). Overrides are what the shards write (docs/migration.md, "Ownership"): one
   for each session placed off its home (at its first save; ``--no-spill-overrides``:
   none, as shards before session 7) and one at each take-over of a stored session by
   another shard. ``--follow-overrides``: replicas that follow them
   (``connect(follow_overrides=True)``, docs/routing.md): the next snapshot's
   ``overrides`` carry them to every replica, whose real router then sends the session to
   its owner; ``override_writes_per_s`` is what placement overrides write (one per session
   placed off home, with sessions starting as fast as they end, mean
   ``--session-life-s``). ``--shard-checks`` models ``routing.shard_bound``
   (docs/routing.md, "The bound at the shard"): the shard that receives a new session
   checks its exact load against the router's bound (the snapshot's total with its own
   load exact, the same spill floor) and, when full, redirects it to its own router's
   choice with itself excluded, which takes it without checking again
   (``admit_redirects_share``: redirects per new session); ``--shard-admits``:
   the same with replicas that apply no balance bound of their own (ceilings only).
3. **Sessions moved**, in units of the ideal 1/N, over all sessions and the ring's homes
   (no caller zone, as the replicas route): ``moved_lost_*`` when each shard in turn is
   lost (its sessions move; mean, p90, max over the shards), ``moved_added_*`` when one
   of ``--add-trials`` new shards is added. ``first_attempts_changed_lost/added``: one
   loss and one addition with replica 0's real decisions (bounded loads and its memo)
   on ``--routed-sample`` sessions, loads left as they are: on an addition every shard's
   bound shrinks by 1/N, so shards sitting at the bound spill their next requests too.
   ``rebuild_100_replicas_*_s``: adopting those snapshots (one ring rebuild, then 100
   tables).
4. **etcd writes for load reports** (``report_writes_*``): ``--report-shards`` shards
   for ``--report-horizon`` seconds (after 20 s of warm-up), each with the real
   ``LoadAccounting`` (fake clock) and ``LoadReportPolicy`` checked every 0.2 s as the
   registrar does: calls arrive as a Poisson process at ``--utilization`` of a capacity
   of 64, with exponential durations of mean ``--call-s``; the shard holds sessions that
   start and end (mean sessions / N held, mean life ``--session-life-s``). Writes per
   shard per second times N: the fleet's rate, against etcd's practical ~10,000/s.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from bisect import bisect_right
from collections.abc import Mapping
from itertools import accumulate
from types import MappingProxyType

from shardroute.model import EMPTY_MAPPING, LoadReport, Override, Shard, Topology
from shardroute.routing import Decision, Reason, Router, RoutingPolicy, key_hash
from shardroute.routing._ring import shard_points  # a new shard's points, as the ring makes them
from shardroute.server.load import LoadAccounting, LoadReportPolicy
from shardroute.sessions.ownership import Action, OwnershipDecision, decide

BATCH = 200
SPLIT = ("spill_or_not_spilled", "spill_or_not_held_home", "where_to", "with_pins", "fresh_differ")
"""Why the replicas disagree on a sample: some send the session home and some elsewhere,
and it was placed off home (``spilled``: its home has room again) or at home
(``held_home``: its home is at or over the bound now); or all send it off home, to different
shards (``where_to``). Also counted: some of them follow a pin (``with_pins``), and those
that do not follow one disagree among themselves (``fresh_differ``: load views differ)."""
ETCD_WRITES_PER_S = 10_000
NO_BOUND = 1e9  # --shard-admits: the replicas' balance factor (no shard is ever full)
SAFE_BOUND = 1.0 - 1e-9  # as the router's bound (routing/_table.py, SAFE)
MAX_ADMIT_HOPS = 1  # the shard named takes it without checking (sessions/admission.py)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def fleet(n: int, zones: int, capacity: int) -> Mapping[str, Shard]:
    return MappingProxyType(
        {
            f"shard-{i:05d}": Shard(
                id=f"shard-{i:05d}",
                address=f"10.{i // 62500}.{i // 250 % 250}.{i % 250}:50051",
                zone=f"zone-{i % zones}",
                region="region-1",
                capacity=capacity,
            )
            for i in range(n)
        }
    )


def snapshot(
    shards: Mapping[str, Shard],
    loads: Mapping[str, int],
    rev: int,
    reports: dict[str, LoadReport],
    overrides: Mapping[str, Override] = EMPTY_MAPPING,
) -> Topology:
    """A snapshot whose reports are new objects only for the shards whose load changed
    (as discovery applies the load keys an etcd watch delivers)."""
    for sid, v in loads.items():
        old = reports.get(sid)
        if old is None or old.inflight != v:
            reports[sid] = LoadReport(inflight=v)
    current = MappingProxyType({sid: reports[sid] for sid in shards})
    return Topology(
        service="sim",
        revision=rev,
        shards=shards,
        loads=current,
        shards_revision=1,
        overrides=overrides,
    )


def zipf_ranks(count: int, rng: random.Random) -> list[float]:
    """Each session's Zipf popularity, 1 / rank**1.1, ranks shuffled over the sessions."""
    weights = [1 / rank**1.1 for rank in range(1, count + 1)]
    rng.shuffle(weights)
    return weights


def session_loads(popularity: list[float], most: int) -> list[int]:
    """Calls a session keeps in flight: its popularity scaled so the hottest keeps
    ``most``, at least 1 (a conversation's turns mostly run one at a time)."""
    top = max(popularity)
    return [max(1, math.ceil(most * p / top)) for p in popularity]


# --------------------------------------------------------------------------- 1. one replica


def one_replica(args: argparse.Namespace, vnodes: int) -> dict[str, float]:
    """Part 1 in this (fresh) process; see the module docstring."""
    rng = random.Random(args.seed)
    capacity = 64
    shards = fleet(args.shards, args.zones, capacity)
    loads = {sid: rng.randint(26, 38) for sid in shards}  # 40-60 % of 64
    topology = snapshot(shards, loads, 1, {})
    popularity = zipf_ranks(args.sessions, rng)
    stream = rng.choices(range(args.sessions), cum_weights=list(accumulate(popularity)), k=100_000)
    keys = [f"conv-{i}" for i in stream]
    gc.collect()
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    router = Router(RoutingPolicy(vnodes_per_weight=vnodes))
    router.prepare(topology)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    built = rss_mb()
    t0 = time.perf_counter()
    router.prepare(topology, zone="zone-0")
    zone_view_s = time.perf_counter() - t0
    route = router.route
    for key in keys:  # warm: the decision caches of the points this traffic hits
        route(key, topology)
        route(key, topology, zone="zone-0")
    samples: dict[str, list[float]] = {"route": [], "zone": [], "cpu": []}
    perf, cpu = time.perf_counter_ns, time.process_time_ns
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        c0n, t0n = cpu(), perf()
        for key in batch:
            route(key, topology)
        t1n, c1n = perf(), cpu()
        for key in batch:
            route(key, topology, zone="zone-0")
        t2n = perf()
        samples["route"].append((t1n - t0n) / len(batch) / 1e3)
        samples["cpu"].append((c1n - c0n) / len(batch) / 1e3)
        samples["zone"].append((t2n - t1n) / len(batch) / 1e3)
    return {
        "vnodes_per_weight": vnodes,
        "ring_points": len(router.ring.points),
        "build_s": round(build_s, 3),
        "build_cpu_s": round(build_cpu, 3),
        "build_mb": round(built - before, 1),
        "zone_view_s": round(zone_view_s, 3),
        "warm_mb": round(rss_mb() - before, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3 - before, 1),
        "route_us_p50": round(statistics.median(samples["route"]), 3),
        "route_cpu_us_p50": round(statistics.median(samples["cpu"]), 3),
        "route_zone_us_p50": round(statistics.median(samples["zone"]), 3),
    }


def in_subprocess(args: argparse.Namespace, vnodes: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--one-replica",
        str(vnodes),
        "--shards",
        str(args.shards),
        "--sessions",
        str(args.sessions),
        "--zones",
        str(args.zones),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- 2. 100 replicas


class Heard:
    """One replica's ``loads`` (an ``OwnLoads``): its own calls in flight and, with
    ``use_trailers``, the load trailer of each response it got since the last snapshot.

    A real client routes on a snapshot whose report for a shard is the freshest of
    the etcd report and the shard's last trailer (``transport/loadboard.py``) and takes
    max(that, own in flight). While sessions are placed, loads only grow, so a trailer
    heard since the last snapshot is at least that snapshot's report (and the next
    snapshot at least the trailer): the load is max(report, own, trailer), which this
    keeps as its ``counts`` (O(1) a response instead of a new snapshot a response).
    """

    __slots__ = ("basis", "counts", "excess", "own", "trailers", "use_trailers")

    def __init__(self, use_trailers: bool) -> None:
        self.use_trailers = use_trailers
        self.own: dict[str, int] = {}
        self.trailers: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.basis: Mapping[str, int] | None = None
        self.excess = 0

    def begin(self, shard_id: str, n: int) -> None:
        self.own[shard_id] = self.own.get(shard_id, 0) + n
        self._update(shard_id)

    def heard(self, shard_id: str, load: int) -> None:
        """A response from ``shard_id`` whose trailer says it holds ``load`` calls."""
        if self.use_trailers:
            self.trailers[shard_id] = load
            self._update(shard_id)

    def _update(self, shard_id: str) -> None:
        new = max(self.own.get(shard_id, 0), self.trailers.get(shard_id, 0))
        old = self.counts.get(shard_id, 0)
        self.counts[shard_id] = new
        t = self.basis.get(shard_id) if self.basis is not None else None
        if t is not None:
            self.excess += max(0, new - t) - max(0, old - t)

    def rebase(self, basis: Mapping[str, int]) -> None:
        """A new snapshot: its reports are fresher than every trailer heard before it."""
        self.trailers.clear()
        self.basis = basis
        self.counts = dict(self.own)
        self.excess = sum(max(0, c - basis[s]) for s, c in self.counts.items() if s in basis)


class ExactLoad:
    """A shard's router's ``loads`` (an ``OwnLoads``): the snapshot, with its own exact load."""

    __slots__ = ("basis", "counts", "excess")

    def __init__(self, shard_id: str, load: int, basis: Mapping[str, int]) -> None:
        self.counts = {shard_id: load}
        self.basis = basis
        self.excess = max(0, load - basis.get(shard_id, 0))


class Fleet:
    """The replicas, the shards' true loads and the snapshots they are all fed."""

    def __init__(self, args: argparse.Namespace, shards: Mapping[str, Shard]) -> None:
        policy = RoutingPolicy(vnodes_per_weight=args.vnodes, balance_factor=args.balance_factor)
        self.shards = shards
        self.follow_overrides = args.follow_overrides
        # --shard-admits: the replicas apply no balance bound (c so large that no shard is
        # ever full; ceilings still apply); the shard that receives a new session checks
        # its exact load against the bound and redirects it along its own router's plan
        self.admits: Router | None = None
        self.admit_basis: Mapping[str, int] = EMPTY_MAPPING
        if args.shard_admits or args.shard_checks:
            self.admits = Router(policy)
        if args.shard_admits:
            policy = RoutingPolicy(vnodes_per_weight=args.vnodes, balance_factor=NO_BOUND)
        self.overrides: dict[str, Override] = {}  # what the shards wrote (etcd's)
        self.changed = False  # overrides or loads changed since the last snapshot
        self.routers = [Router(policy) for _ in range(args.replicas)]
        self.flights = [Heard(not args.no_trailers) for _ in self.routers]
        self.load = dict.fromkeys(shards, 0)
        # --report-lag: what each shard last wrote (load, sessions), under the step rules
        # of the real LoadReportPolicy (its 1 s minimum interval and heartbeat aside)
        self.report_lag = args.report_lag
        self.held = dict.fromkeys(shards, 0)
        self.written: dict[str, tuple[int, int]] = {}
        self.reports: dict[str, LoadReport] = {}
        self.revision = 0
        self.admit_redirects = 0
        self.rates: list[int] = []
        self.topology = self.publish()

    def publish(self, shards: Mapping[str, Shard] | None = None) -> Topology:
        """A new snapshot with every shard's exact load, adopted by every replica."""
        if shards is not None:
            self.shards = shards
            for sid in shards:
                self.load.setdefault(sid, 0)
        self.revision += 1
        loads = {sid: self.load[sid] for sid in self.shards}
        if self.report_lag:
            loads = self.reported(loads)
        overrides: Mapping[str, Override] = EMPTY_MAPPING
        if self.follow_overrides:  # the shards' overrides, delivered by the watch
            overrides = MappingProxyType(dict(self.overrides))
        self.topology = snapshot(self.shards, loads, self.revision, self.reports, overrides)
        for router, flight in zip(self.routers, self.flights, strict=True):
            router.prepare(self.topology)
            flight.rebase(router.basis(self.topology))
        if self.admits is not None:
            self.admits.prepare(self.topology)
            self.admit_basis = self.admits.basis(self.topology)
        self.changed = False
        return self.topology

    def reported(self, exact: Mapping[str, int]) -> dict[str, int]:
        """The loads etcd holds: a shard writes its exact load once it moved by 25 % of
        its capacity or its session count by 10 % (``LoadReportPolicy``'s steps)."""
        policy = LoadReportPolicy(capacity=1)
        out = {}
        for sid, load in exact.items():
            held = self.held.get(sid, 0)
            last = self.written.get(sid)
            if last is None or (
                abs(load - last[0])
                >= max(1, math.ceil(policy.inflight_step * self.shards[sid].capacity))
                or abs(held - last[1]) >= max(1, math.ceil(policy.sessions_step * last[1]))
            ):
                last = self.written[sid] = (load, held)
            out[sid] = last[0]
        return out

    def admit(self, key: str, sid: str) -> tuple[str, int]:
        """--shard-admits: the shard ``sid`` gets a new session; while the shard it lands on
        is full by its exact load (against the bound of the snapshot's total with its own
        load exact), it redirects the session to its router's next choice (itself
        excluded), which takes it without checking again, as shards do
        (``MAX_ADMIT_HOPS``). Returns where it is placed and the redirects it took."""
        assert self.admits is not None
        tb_total = sum(self.admit_basis.values())
        policy = self.admits.policy
        c, n = policy.balance_factor, len(self.admit_basis)
        floor = math.floor(policy.spill_floor * self.shards[sid].capacity + 1e-9)
        tried: set[str] = set()
        while len(tried) < MAX_ADMIT_HOPS:
            exact = self.load[sid]
            total = tb_total - self.admit_basis.get(sid, 0) + exact
            if exact < floor or exact < c * (total + 1) / n * SAFE_BOUND:
                break
            tried.add(sid)
            view = ExactLoad(sid, exact, self.admit_basis)
            here = self.shards[sid]  # from where the shard stands, as sessions/admission.py
            sid = self.admits.route(
                key,
                self.topology,
                zone=here.zone or None,
                region=here.region or None,
                excluded=tried,
                loads=view,
            ).shard.id
        return sid, len(tried)


def place(
    args: argparse.Namespace, sim: Fleet, keys: list[str], rates: list[int]
) -> tuple[list[str], float]:
    """Each session placed once, at a random replica; returns each session's shard id
    and the share placed off their home."""
    rng = random.Random(args.seed + 1)
    order = list(range(len(keys)))
    rng.shuffle(order)
    replicas = [rng.randrange(len(sim.routers)) for _ in order]
    owner = [""] * len(keys)
    load, routers, flights = sim.load, sim.routers, sim.flights
    spilled = hops = 0
    for n, (i, k) in enumerate(zip(order, replicas, strict=True)):
        if n % args.report_every == 0 and n:
            sim.publish()
            if n % (args.report_every * 20) == 0:
                log(f"placed {n}")
        key = keys[i]
        d = routers[k].route(key, sim.topology, loads=flights[k])
        sid = d.shard.id
        if sim.admits is not None:
            sid, took = sim.admit(key, sid)
            hops += took
        flights[k].begin(sid, rates[i])
        if sid == d.shard.id:
            routers[k].settle(key, d)
        else:  # redirected by the shard: the transport remembers where it went
            routers[k].remember(key, sid)
        load[sid] += rates[i]
        sim.held[sid] += 1
        flights[k].heard(sid, load[sid])  # the response's load trailer
        owner[i] = sid
        if sid != d.home.id:
            spilled += 1
            if args.spill_overrides:  # the shard that took it on writes an override
                sim.overrides[key] = Override(sid, 1)
    sim.publish()
    sim.admit_redirects = hops
    log(f"placed {len(keys)} sessions, {spilled / len(keys):.2%} off their home, {hops} redirects")
    return owner, spilled / len(keys)


def max_over_avg(loads: list[int]) -> float:
    return max(loads) / (sum(loads) / len(loads))


def traffic(
    args: argparse.Namespace,
    sim: Fleet,
    keys: list[str],
    popularity: list[float],
    owner: list[str],
) -> dict[str, float]:
    """Zipf requests at random replicas; redirects taught; agreement sampled."""
    rng = random.Random(args.seed + 2)
    cum = list(accumulate(popularity))
    stream = rng.choices(range(len(keys)), cum_weights=cum, k=args.requests)
    topology, routers, flights = sim.topology, sim.routers, sim.flights
    pairs = list(zip(routers, flights, strict=True))
    redirects = takeovers = 0
    sampled, agreed = [0, 0], [0, 0]  # before / during the last quarter of the requests
    split = dict.fromkeys(SPLIT, 0)
    late = len(stream) * 3 // 4
    load, rates = sim.load, sim.rates
    overrides, live = sim.overrides, sim.shards
    for n, i in enumerate(stream):
        if sim.changed and n % args.report_every == 0:
            topology = sim.publish()  # the takeovers' loads and overrides
        k = rng.randrange(len(routers))
        key = keys[i]
        d = routers[k].route(key, topology, loads=flights[k])
        sid = d.shard.id
        # the shard's ownership rules, on etcd's override (what a shard in doubt reads);
        # --no-takeovers: the model until session 7, every miss redirected to the owner
        found = overrides.get(key)
        why = None if d.reason is Reason.AFFINITY else d.reason.value
        act = decide(
            shard_id=sid, override=found, live=live, held=sid == owner[i], frozen=False, reason=why
        )
        if not args.takeovers and sid != owner[i]:
            act = OwnershipDecision(Action.REDIRECT, owner[i])
        if act.action is Action.SERVE:
            routers[k].settle(key, d)
        elif act.action is Action.REDIRECT:
            redirects += 1  # the shard answers with a redirect; the transport remembers
            routers[k].remember(key, act.owner)
        else:  # taken over from the store: the session moves with its calls
            takeovers += 1
            if owner[i] != sid or (found is not None and found.owner != sid):
                overrides[key] = Override(sid, (found.epoch if found else 0) + 1)
            load[owner[i]] -= rates[i]
            load[sid] += rates[i]
            sim.held[owner[i]] -= 1
            sim.held[sid] += 1
            owner[i] = sid
            sim.changed = True
            routers[k].settle(key, d)
        if n % args.sample_every == 0:
            every = [r.route(key, topology, loads=f) for r, f in pairs]
            same = len({e.shard.id for e in every}) == 1
            sampled[n >= late] += 1
            agreed[n >= late] += same
            if not same:
                _why(every, owner[i], split)
    out = {
        "agreement": round(sum(agreed) / max(1, sum(sampled)), 5),
        "agreement_last_quarter": round(agreed[1] / max(1, sampled[1]), 5),
        "agreement_samples": sum(sampled),
        "redirected_share": round(redirects / max(1, len(stream)), 5),
        "taken_over_share": round(takeovers / max(1, len(stream)), 5),
        "max_over_avg_after_traffic": round(max_over_avg(list(load.values())), 4),
    }
    out.update({f"disagree_{k}": v for k, v in split.items()})
    return out


def _why(decisions: list[Decision], owner: str, split: dict[str, int]) -> None:
    """Counts one sample on which the replicas disagree (see ``SPLIT``)."""
    homes = sum(d.shard is d.home for d in decisions)
    if not homes:
        split["where_to"] += 1
    elif decisions[0].home.id == owner:
        split["spill_or_not_held_home"] += 1
    else:
        split["spill_or_not_spilled"] += 1
    pinned = (Reason.MEMO, Reason.OVERRIDE)
    split["with_pins"] += any(d.reason in pinned for d in decisions)
    split["fresh_differ"] += len({d.shard.id for d in decisions if d.reason not in pinned}) > 1


# --------------------------------------------------------------------------- 3. sessions moved


def moved(args: argparse.Namespace, sim: Fleet, keys: list[str]) -> dict[str, float]:
    """Sessions whose ring home changes when one shard is lost or added (units of 1/N)."""
    ring = sim.routers[0].ring
    n = len(ring.shards)
    hashes = sorted(map(key_hash, keys))
    points, owners = ring.points, ring.owners
    # keys owned by point j: hashes in (points[j-1], points[j]]; point 0 also takes the wrap
    cuts = [bisect_right(hashes, p) for p in points]
    per_shard = [0] * n
    prev = 0
    for j, c in enumerate(cuts):
        per_shard[owners[j]] += c - prev
        prev = c
    per_shard[owners[0]] += len(hashes) - prev
    ideal = len(keys) / n
    lost = sorted(c / ideal for c in per_shard)
    rng = random.Random(args.seed + 3)
    added = []
    for t in range(args.add_trials):
        new_id = f"shard-{rng.randrange(n):05d}-new{t}"
        gained = 0
        for q in shard_points(new_id, args.vnodes):
            j = bisect_right(points, q)
            lo = points[j - 1] if j else points[-1]
            a, b = bisect_right(hashes, lo), bisect_right(hashes, q)
            gained += b - a if lo < q else (len(hashes) - a) + b
        added.append(gained / (len(keys) / (n + 1)))
    return {
        "moved_lost_mean": round(statistics.fmean(lost), 3),
        "moved_lost_p90": round(lost[int(0.9 * (n - 1))], 3),
        "moved_lost_max": round(lost[-1], 3),
        "home_share_cv": round(statistics.pstdev(lost) / statistics.fmean(lost), 3),
        "moved_added_mean": round(statistics.fmean(added), 3),
        "moved_added_max": round(max(added), 3),
    }


def moved_routed(
    args: argparse.Namespace, sim: Fleet, keys: list[str], owner: list[str]
) -> dict[str, float]:
    """One loss and one addition, with replica 0's real decisions on a sample."""
    rng = random.Random(args.seed + 4)
    sample = rng.sample(range(len(keys)), min(len(keys), args.routed_sample))
    router, flight = sim.routers[0], sim.flights[0]
    n = len(sim.shards)

    def where(topology: Topology) -> list[str]:
        return [router.route(keys[i], topology, loads=flight).shard.id for i in sample]

    base = sim.shards
    before = where(sim.topology)
    victim = owner[sample[0]]
    t0 = time.perf_counter()
    sim.publish(MappingProxyType({k: v for k, v in base.items() if k != victim}))
    rebuild_lost_s = time.perf_counter() - t0
    after_loss = where(sim.topology)
    extra = Shard(id=f"{victim}-new", address="10.9.9.9:50051", zone="zone-0", region="region-1")
    t0 = time.perf_counter()
    sim.publish(MappingProxyType({**base, extra.id: extra}))
    rebuild_added_s = time.perf_counter() - t0
    after_add = where(sim.topology)
    ideal = len(sample) / n
    return {
        "first_attempts_changed_lost": round(
            sum(a != b for a, b in zip(before, after_loss, strict=True)) / ideal, 3
        ),
        "first_attempts_changed_added": round(
            sum(a != b for a, b in zip(before, after_add, strict=True)) / (len(sample) / (n + 1)), 3
        ),
        "rebuild_100_replicas_lost_s": round(rebuild_lost_s, 3),
        "rebuild_100_replicas_added_s": round(rebuild_added_s, 3),
    }


# --------------------------------------------------------------------------- 4. load reports


def report_writes(
    args: argparse.Namespace, capacity: int = 64, **policy: float
) -> dict[str, float]:
    """etcd writes per shard per second under LoadReportPolicy(**policy), over a
    modelled load."""
    rng = random.Random(args.seed + 5)
    tick, warmup = 0.2, 20.0
    held_mean = args.sessions / args.shards
    arrival = args.utilization * capacity / args.call_s  # calls per second per shard
    births = held_mean / args.session_life_s
    writes = 0
    for _ in range(args.report_shards):
        clock = [0.0]
        acct = LoadAccounting(clock=lambda c=clock: c[0])  # type: ignore[misc]
        rule = LoadReportPolicy(capacity=capacity, rng=random.Random(rng.random()), **policy)
        ends: list[tuple[float, float]] = []  # (end, start) of calls in flight
        held = round(held_mean)
        next_call = rng.expovariate(arrival)
        rule.written(acct.report(held, 0.0), 0.0)  # registration
        t = 0.0
        while t < args.report_horizon + warmup:
            t += tick
            while next_call <= t or (ends and ends[0][0] <= t):
                if ends and ends[0][0] <= next_call:
                    clock[0], started = heapq.heappop(ends)
                    acct.call_finished(started)
                else:
                    clock[0] = next_call
                    end = next_call + rng.expovariate(1 / args.call_s)
                    heapq.heappush(ends, (end, acct.call_started()))
                    next_call += rng.expovariate(arrival)
            clock[0] = t
            # sessions: Poisson arrivals, each held for an exponential life
            held += _poisson(rng, births * tick) - _binomial(rng, held, tick / args.session_life_s)
            report = acct.report(held, t)
            if rule.should_write(report, t):
                rule.written(report, t)
                writes += t > warmup
    per_shard = writes / (args.report_shards * args.report_horizon)
    fleet_rate = per_shard * args.shards
    return {
        "report_writes_per_shard_per_s": round(per_shard, 4),
        "report_writes_per_s": round(fleet_rate),
        "report_writes_share_of_etcd": round(fleet_rate / ETCD_WRITES_PER_S, 3),
    }


def _poisson(rng: random.Random, mean: float) -> int:
    n, t = 0, rng.expovariate(1.0)
    while t < mean:
        n += 1
        t += rng.expovariate(1.0)
    return n


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="10,000 shards, 1M sessions (minutes)")
    ap.add_argument("--shards", type=int, default=1_000)
    ap.add_argument("--zones", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--vnodes", type=int, default=40, help="vnodes_per_weight of the runs")
    ap.add_argument("--no-baseline", action="store_true", help="skip the 160-vnode replica")
    ap.add_argument(
        "--no-trailers", action="store_true", help="replicas do not learn loads from responses"
    )
    ap.add_argument("--balance-factor", type=float, default=RoutingPolicy().balance_factor)
    ap.add_argument(
        "--follow-overrides",
        "--shared-pins",  # its earlier name, when it was a model
        action="store_true",
        help="replicas follow session overrides (each session placed off home gets one)",
    )
    ap.add_argument(
        "--no-takeovers",
        action="store_true",
        help="redirect every first attempt that missed the session's shard (the model until"
        " session 7); by default one that spilled there takes the session over, as shards do",
    )
    ap.add_argument(
        "--no-spill-overrides",
        action="store_true",
        help="shards before session 7: no override for a new session placed off its home"
        " (today the shard writes one at its first save)",
    )
    ap.add_argument(
        "--shard-admits",
        action="store_true",
        help="replicas apply no balance bound; a shard given a new session over its bound"
        " (exact load) redirects it along its own router's plan",
    )
    ap.add_argument(
        "--report-lag",
        action="store_true",
        help="snapshots carry what the shards last wrote under LoadReportPolicy's steps"
        " (25 %% of capacity, 10 %% of sessions), not their exact loads",
    )
    ap.add_argument(
        "--shard-checks",
        action="store_true",
        help="as --shard-admits, but the replicas keep their own balance bound too",
    )
    ap.add_argument("--report-every", type=int, default=0, help="placements a snapshot (N)")
    ap.add_argument("--max-session-calls", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--sample-every", type=int, default=50)
    ap.add_argument("--add-trials", type=int, default=20)
    ap.add_argument("--routed-sample", type=int, default=100_000)
    ap.add_argument("--report-shards", type=int, default=10)
    ap.add_argument("--report-horizon", type=float, default=60.0)
    ap.add_argument("--utilization", type=float, default=0.5)
    ap.add_argument("--call-s", type=float, default=2.0)
    ap.add_argument("--session-life-s", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--one-replica", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.full:
        args.shards, args.sessions, args.requests = 10_000, 1_000_000, 200_000
        args.report_shards, args.report_horizon = 40, 120.0
    args.report_every = args.report_every or args.shards  # about one placement a shard
    args.takeovers = not args.no_takeovers
    # the old model put an override for each session placed off home; so does a shard
    # that admits (it writes the override naming the shard it redirects the session to)
    args.spill_overrides = not args.no_spill_overrides or args.shard_admits or args.shard_checks
    args.spill_overrides |= args.no_takeovers and args.follow_overrides
    if args.one_replica:
        print(json.dumps(one_replica(args, args.one_replica)))
        return
    started = time.perf_counter()
    out: dict[str, object] = {
        "shards": args.shards,
        "zones": args.zones,
        "sessions": args.sessions,
        "replicas": args.replicas,
        "vnodes_per_weight": args.vnodes,
        "trailers": not args.no_trailers,
        "balance_factor": args.balance_factor,
        "follow_overrides": args.follow_overrides,
        "takeovers": args.takeovers,
        "shard_admits": args.shard_admits,
        "shard_checks": args.shard_checks,
        "spill_overrides": args.spill_overrides,
        "report_lag": args.report_lag,
    }
    replica = in_subprocess(args, args.vnodes)
    log("one replica:", replica)
    out.update({k: v for k, v in replica.items() if k != "vnodes_per_weight"})
    if not args.no_baseline and args.vnodes != 160:
        base = in_subprocess(args, 160)
        log("one replica, 160 vnodes:", base)
        out["baseline_160"] = {k: v for k, v in base.items() if k != "vnodes_per_weight"}
    rng = random.Random(args.seed)
    popularity = zipf_ranks(args.sessions, rng)
    rates = session_loads(popularity, args.max_session_calls)
    keys = [f"conv-{i}" for i in range(args.sessions)]
    # capacity: twice the average placed load, so the fleet runs at about half capacity
    capacity = max(8, round(2 * sum(rates) / args.shards))
    t0 = time.perf_counter()
    sim = Fleet(args, fleet(args.shards, args.zones, capacity))
    sim.rates = rates
    log(f"{args.replicas} replicas fed the first snapshot in {time.perf_counter() - t0:.2f}s")
    owner, off_home = place(args, sim, keys, rates)
    out["placed_off_home_share"] = round(off_home, 5)
    out["admit_redirects_share"] = round(sim.admit_redirects / args.sessions, 5)
    # an override written for each session placed off its home (whether or not clients
    # follow them), as many sessions start per second as end (mean life)
    out["override_writes_per_s"] = round(off_home * args.sessions / args.session_life_s, 1)
    out["max_over_avg"] = round(max_over_avg(list(sim.load.values())), 4)
    ring = sim.routers[0].ring
    homes = dict.fromkeys(sim.shards, 0)
    for key, rate in zip(keys, rates, strict=True):
        homes[ring.home(key).id] += rate  # type: ignore[union-attr]
    out["max_over_avg_homes"] = round(max_over_avg(list(homes.values())), 3)
    log(f"placed: max/avg {out['max_over_avg']} (homes only: {out['max_over_avg_homes']})")
    out.update(traffic(args, sim, keys, popularity, owner))
    log(
        "traffic:", {k: out[k] for k in ("agreement", "agreement_last_quarter", "redirected_share")}
    )
    out.update(moved(args, sim, keys))
    out.update(moved_routed(args, sim, keys, owner))
    log("moved:", {k: v for k, v in out.items() if k.startswith(("moved", "rebuild"))})
    out.update(report_writes(args))
    before = report_writes(args, inflight_step=0.10)  # the policy until 2026-11-30
    out["report_writes_per_s_step10"] = before["report_writes_per_s"]
    log("load reports:", {k: v for k, v in out.items() if k.startswith("report_writes")})
    out["etcd_writes_per_s_practical"] = ETCD_WRITES_PER_S
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
