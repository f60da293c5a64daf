"""The compact ring: arrays equal to the plain sorted (point, shard index) pairs, and
rebuilt from the previous ring (few shards changed) exactly as built from scratch."""

from __future__ import annotations

import random
from array import array
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st
from xxhash import xxh3_64_intdigest

from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import HashRing, Router
from shardroute.routing._ring import _position, _sorted_arrays, _splice, vnode_count


def reference(shards: dict[str, Shard], vnodes: int) -> tuple[list[int], list[int]]:
    """The ring as first specified: every "<id>#<n>" point with its shard's index in id
    order, sorted by (point, index)."""
    ordered = sorted(shards.values(), key=lambda s: s.id)
    pairs = sorted(
        (xxh3_64_intdigest(f"{s.id}#{n}".encode("utf-8", "surrogatepass")), i)
        for i, s in enumerate(ordered)
        for n in range(vnode_count(s, vnodes))
    )
    return [p for p, _ in pairs], [o for _, o in pairs]


def fleet(ids: list[str], weights: dict[str, float] | None = None) -> dict[str, Shard]:
    weights = weights or {}
    return {i: Shard(id=i, address=f"{i}:1", weight=weights.get(i, 1.0)) for i in ids}


def test_arrays_are_compact_and_equal_the_reference() -> None:
    shards = fleet([f"s{i}" for i in range(50)] + ["é-\ud800"], {"s3": 2.5, "s4": 0.0})
    ring = HashRing.build(shards, 40)
    assert (ring.points.typecode, ring.owners.typecode) == ("Q", "I")
    assert (list(ring.points), list(ring.owners)) == reference(shards, 40)
    assert ring.counts[ring.index["s3"]] == 100 and ring.counts[ring.index["s4"]] == 0


def test_bucketed_sort_matches_one_sort_with_ties() -> None:
    rng = random.Random(3)
    points = [rng.getrandbits(64) for _ in range(10_000)]
    points += points[:50]  # equal points of different shards: ordered by shard index
    packed = [(p << 20) | rng.randrange(1 << 20) for p in points]
    expected = sorted(packed)
    got_points, got_owners = _sorted_arrays(list(packed))
    assert list(got_points) == [x >> 20 for x in expected]
    assert list(got_owners) == [x & 0xFFFFF for x in expected]


def test_position_and_splice_handle_equal_points() -> None:
    points = array("Q", [5, 7, 7, 7, 9])
    owners = array("I", [0, 1, 3, 4, 2])
    assert _position(points, owners, 7, 3) == 2
    # drop (7, 3); insert (7, 2) before (7, 4) and (10, 5) at the end
    out_p, out_o = _splice(points, owners, [2], [(3, 7, 2), (5, 10, 5)])
    assert list(zip(out_p, out_o, strict=True)) == [(5, 0), (7, 1), (7, 2), (7, 4), (9, 2), (10, 5)]


ids = st.lists(
    st.sampled_from([f"s{i:02d}" for i in range(60)]), min_size=0, max_size=40, unique=True
)


@settings(max_examples=60, deadline=None)
@given(
    before=ids,
    after=ids,
    reweigh=st.lists(st.sampled_from([f"s{i:02d}" for i in range(60)]), max_size=3),
    down=st.lists(st.sampled_from([f"s{i:02d}" for i in range(60)]), max_size=3),
)
def test_rebuild_from_the_previous_ring_equals_a_fresh_build(
    before: list[str], after: list[str], reweigh: list[str], down: list[str]
) -> None:
    previous = HashRing.build(fleet(before), 16)
    shards = fleet(after, {i: 2.0 for i in reweigh})
    for i in down:
        if i in shards:
            shards[i] = Shard(id=i, address="x:1", weight=shards[i].weight, state=ShardState.DOWN)
    rebuilt = HashRing.build(shards, 16, previous=previous)
    assert (list(rebuilt.points), list(rebuilt.owners)) == reference(shards, 16)
    assert rebuilt.shards == tuple(sorted(shards.values(), key=lambda s: s.id))


def test_one_shard_lost_or_added_gives_the_fresh_build_and_a_state_change_no_copy() -> None:
    base = fleet([f"shard-{i:04d}" for i in range(400)])
    ring = HashRing.build(base, 40)
    grown = {**base, "shard-0199x": Shard(id="shard-0199x", address="n:1")}
    shrunk = {k: v for k, v in base.items() if k != "shard-0042"}
    for shards in (grown, shrunk):
        rebuilt = HashRing.build(shards, 40, previous=ring)
        assert (list(rebuilt.points), list(rebuilt.owners)) == reference(shards, 40)
    # a state change keeps the very same arrays
    downed = {**base, "shard-0007": Shard(id="shard-0007", address="x:1", state=ShardState.DOWN)}
    same = HashRing.build(downed, 40, previous=ring)
    assert same.points is ring.points and same.owners is ring.owners


def test_routers_fed_one_snapshot_share_one_ring_and_its_views() -> None:
    shards = MappingProxyType(fleet([f"s{i}" for i in range(30)]))
    topology = Topology(service="chat", shards=shards)
    a, b = Router(), Router()
    a.prepare(topology, zone=None)
    b.prepare(topology, zone=None)
    assert a.ring is b.ring
    assert a.route("k", topology) is b.route("k", topology)  # one cached decision
    # a plain dict may change after the build: never shared
    plain = fleet(["a", "b"])
    assert HashRing.build(plain, 10) is not HashRing.build(plain, 10)


def test_reported_loads_follow_a_snapshot_that_replaces_some_reports() -> None:
    shards = MappingProxyType(fleet([f"s{i}" for i in range(20)]))
    reports = {f"s{i}": LoadReport(inflight=i) for i in range(20)}
    router = Router()
    router.prepare(Topology(service="chat", shards=shards, loads=MappingProxyType(reports)))
    changed = {**reports, "s3": LoadReport(inflight=9, queue_depth=2), "s7": LoadReport()}
    del changed["s11"]
    topology = Topology(service="chat", shards=shards, loads=MappingProxyType(changed))
    router.prepare(topology)
    fresh = Router()
    fresh.prepare(topology)
    assert router.basis(topology) == fresh.basis(topology)
    assert [router.load(f"s{i}") for i in range(20)] == [fresh.load(f"s{i}") for i in range(20)]
    assert router.load("s3") == 11 and router.load("s11") == 0
