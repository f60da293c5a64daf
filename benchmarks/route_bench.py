"""Benchmark of the router (shardroute.routing). Prints one JSON line, last, on stdout.

    python benchmarks/route_bench.py [--keys 100000] [--sizes 16,64,256]

Per size (shards of capacity 64 in three zones): ``route_us_p50`` is the full
``Router.route`` decision (memo lookup, bounded-load and priority-ceiling checks against
reported loads and own in-flight counts) on a warm ring, called as
``route(key, topology)``, with every shard reporting 20-30 calls in flight (no home
full); ``route_zone_us_p50`` the same with ``zone=...``; ``route_stressed_us_p50`` with
reports of 10-30, so about a quarter of the sessions have spilled and route through the
affinity memo. ``uhashring_us_p50`` is uhashring's ``get_node(key)`` over the same shard
names and keys, in the same run, batches of 200 interleaved with ours (medians over
batches). ``ratio*`` divide by it. ``build_ms`` is the median time of ``HashRing.build``.

``max_load_over_avg``: 64 shards, c = 1.25. 100k sessions, in random order, are each
placed by one ``route()`` call and then hold their request rate as in-flight calls
(``InFlight.begin(shard, rate)``); rates follow a Zipf law (exponent 1.1 over the session's rank,
ceil(64 / rank**1.1), so 1 to 64 concurrent calls). The figure is the largest shard load
over the average, after all sessions are placed. ``moved_fraction_add_one``: share of 100k
keys whose home changes when a 65th shard joins 64.

Everything but the JSON line goes to stderr. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from types import MappingProxyType

import uhashring  # benchmark-only dependency (the "test" extra)

from shardroute.model import LoadReport, Shard, Topology
from shardroute.routing import HashRing, Router, RoutingPolicy
from shardroute.transport import InFlight

BATCH = 200


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def make_topology(n: int, *, loads: tuple[int, int] | None, rng: random.Random) -> Topology:
    shards = {
        f"shard-{i:03d}": Shard(
            id=f"shard-{i:03d}",
            address=f"10.0.{i // 250}.{i % 250}:50051",
            zone=f"zone-{i % 3}",
            region="region-1",
            capacity=64,
        )
        for i in range(n)
    }
    reports = (
        {sid: LoadReport(inflight=rng.randint(*loads), ts=time.time()) for sid in shards}
        if loads
        else {}
    )
    return Topology(
        service="bench",
        revision=1,
        shards=MappingProxyType(shards),
        loads=MappingProxyType(reports),
        shards_revision=1,
    )


def bench_size(n: int, keys: list[str], rng: random.Random) -> dict[str, float]:
    # Steady state: every shard 20-30 of 64 in flight (reported), so no home is full,
    # but every decision still runs the bounded-load and ceiling checks.
    topology = make_topology(n, loads=(20, 30), rng=rng)
    # Stress: reports 10-30 against an average of 20: a quarter of the shards are above
    # ceil(1.25 * avg), their sessions spill and then route through the affinity memo.
    skewed = make_topology(n, loads=(10, 30), rng=rng)
    policy = RoutingPolicy()
    builds = []
    for _ in range(5):
        t0 = time.perf_counter()
        HashRing.build(dict(topology.shards), policy.vnodes_per_weight)  # a dict: never shared
        builds.append((time.perf_counter() - t0) * 1e3)

    router = Router(policy)
    router.prepare(topology)
    router.prepare(topology, zone="zone-1")
    stressed = Router(policy)
    stressed.prepare(skewed)
    route, route_stressed = router.route, stressed.route
    for key in keys:  # warm: decision caches filled, spilled sessions pinned
        route(key, topology)
        route(key, topology, zone="zone-1")
        # route() writes nothing: pin the sessions as the transport does after a call
        stressed.settle(key, route_stressed(key, skewed))
    ring = uhashring.HashRing(nodes=list(topology.shards))
    get_node = ring.get_node
    for key in keys[:1000]:
        get_node(key)

    samples: dict[str, list[float]] = {"route": [], "zone": [], "spill": [], "uhashring": []}
    perf = time.perf_counter_ns
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        t0 = perf()
        for key in batch:
            route(key, topology)
        t1 = perf()
        for key in batch:
            get_node(key)
        t2 = perf()
        for key in batch:
            route(key, topology, zone="zone-1")
        t3 = perf()
        for key in batch:
            route_stressed(key, skewed)
        t4 = perf()
        per = len(batch) * 1e3
        samples["route"].append((t1 - t0) / per)
        samples["uhashring"].append((t2 - t1) / per)
        samples["zone"].append((t3 - t2) / per)
        samples["spill"].append((t4 - t3) / per)
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    reasons = Counter(route_stressed(k, skewed).reason.value for k in keys[:10_000])
    log(f"n={n}: stressed reasons {dict(reasons)}")
    uh = p50["uhashring"]
    return {
        "route_us_p50": round(p50["route"], 3),
        "uhashring_us_p50": round(uh, 3),
        "ratio": round(p50["route"] / uh, 3),
        "route_zone_us_p50": round(p50["zone"], 3),
        "ratio_zone": round(p50["zone"] / uh, 3),
        "route_stressed_us_p50": round(p50["spill"], 3),
        "ratio_stressed": round(p50["spill"] / uh, 3),
        "stressed_pinned_share": round(len(stressed.memo) / len(keys), 3),
        "build_ms": round(statistics.median(builds), 2),
        "ring_points": len(router.ring.points),
    }


def zipf_rates(count: int, rng: random.Random) -> list[int]:
    rates = [max(1, math.ceil(64 / rank**1.1)) for rank in range(1, count + 1)]
    rng.shuffle(rates)
    return rates


def max_load_over_avg(sessions: int, rng: random.Random) -> float:
    shards = {
        f"shard-{i:03d}": Shard(id=f"shard-{i:03d}", address="x", capacity=10**7) for i in range(64)
    }
    topology = Topology(service="bench", shards=MappingProxyType(shards))
    router = Router(RoutingPolicy(balance_factor=1.25, memo_size=sessions + 1))
    flight = InFlight()  # the transport's in-flight count, as the client keeps it
    flight.rebase(router.basis(topology))
    rates = zipf_rates(sessions, rng)
    for i, rate in enumerate(rates):
        decision = router.route(f"user-{rng.getrandbits(64):016x}-{i}", topology, loads=flight)
        flight.begin(decision.shard.id, rate)
    loads = [router.load(s, flight) for s in shards]
    avg = sum(loads) / len(loads)
    log(f"zipf placement: total {sum(loads)}, avg {avg:.1f}, max {max(loads)}, min {min(loads)}")
    return max(loads) / avg


def moved_fraction_add_one(keys: list[str]) -> float:
    base = {f"shard-{i:03d}": Shard(id=f"shard-{i:03d}", address="x") for i in range(64)}
    grown = {**base, "shard-064": Shard(id="shard-064", address="x")}
    before = Topology(service="bench", shards=MappingProxyType(base))
    after = Topology(service="bench", shards=MappingProxyType(grown))
    r1, r2 = Router(), Router()
    moved = sum(r1.route(k, before).home.id != r2.route(k, after).home.id for k in keys)
    return moved / len(keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    keys = [f"session-{rng.getrandbits(64):016x}" for _ in range(args.keys)]
    started = time.perf_counter()
    sizes = {}
    for n in (int(x) for x in args.sizes.split(",")):
        sizes[str(n)] = bench_size(n, keys, rng)
        log(f"n={n}: {sizes[str(n)]}")
    result = {
        "sizes": sizes,
        "max_load_over_avg": round(max_load_over_avg(args.keys, rng), 4),
        "moved_fraction_add_one": round(moved_fraction_add_one(keys), 5),
        "moved_goal": round(1.1 / 65, 5),
        "python": sys.version.split()[0],
    }
    log(f"done in {time.perf_counter() - started:.1f}s")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
