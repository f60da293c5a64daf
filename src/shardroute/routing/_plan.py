"""Candidate order for one caller location: the ring split into zone, region and rest tiers."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from itertools import accumulate, chain, compress, repeat
from operator import rshift

from shardroute.routing._decision import Decision
from shardroute.routing._ring import HashRing

__all__ = ["PlanView", "region_of_zone"]


_MASKS = tuple(bytes(int(b == t) for b in range(256)) for t in range(3))  # tier t -> 1, else 0


class _Tier:
    """The ring points owned by one tier's shards, in ring order."""

    __slots__ = ("owners", "points", "size")

    def __init__(self, points: array[int], owners: array[int]) -> None:
        self.points = points
        self.owners = owners
        self.size = len(set(owners))


def region_of_zone(ring: HashRing, zone: str) -> str | None:
    """The region most shards of ``zone`` declare, or None if none does."""
    regions = Counter(s.region for s in ring.shards if s.zone == zone and s.region)
    if not regions:
        return None
    return min(regions, key=lambda r: (-regions[r], r))


class PlanView:
    """The ring as seen from one (zone, region): tier 0 = shards in the zone, tier 1 =
    other shards in the region, tier 2 = the rest. Empty tiers are dropped, so tier 0
    is the nearest tier that has shards; a caller with no zone and no region sees one
    tier, the whole ring.

    Probe order within a tier is the clockwise walk over its points, skipping shards
    already seen. Later tiers are entered at the position of the key's tier-0 point,
    so the whole order depends only on that point: decisions can be cached per point.

    The view is derived data of one ring; ``decisions`` (the affinity decision per
    tier-0 point) and ``pinned`` (memo decisions per point and pinned shard) are
    private caches of pure functions of the ring, filled on first use by the router.
    """

    __slots__ = ("decisions", "owners", "pinned", "points", "shift", "starts", "tiers")

    def __init__(self, ring: HashRing, zone: str | None, region: str | None) -> None:
        if zone and not region:
            region = region_of_zone(ring, zone)
        tier_of = [
            0 if zone and s.zone == zone else 1 if region and s.region == region else 2
            for s in ring.shards
        ]
        tiers: list[_Tier] = []
        if len(set(tier_of)) == 1:  # one tier: the ring's own arrays
            if ring.points:
                tiers.append(_Tier(ring.points, ring.owners))
        else:
            point_tiers = bytes(map(tier_of.__getitem__, ring.owners))
            for t in (0, 1, 2):
                mask = point_tiers.translate(_MASKS[t])
                owners = array("I", compress(ring.owners, mask))
                if owners:
                    tiers.append(_Tier(array("Q", compress(ring.points, mask)), owners))
        self.tiers: tuple[_Tier, ...] = tuple(tiers)
        first = tiers[0] if tiers else _Tier(array("Q"), array("I"))
        self.points: array[int] = first.points
        self.owners: array[int] = first.owners
        self.decisions: list[Decision | None] = [None] * len(first.points)
        self.pinned: dict[int, Decision] = {}  # memo decisions by (position << 20 | shard)
        # Bucket index over tier 0: the top ``bits`` bits of a hash select a bucket;
        # starts[b] is the first point at or after the bucket's start. Most buckets
        # hold no point, so the lookup needs no bisection at all.
        n = len(first.points)
        bits = min(18, max(8, (2 * n).bit_length()))
        self.shift = 64 - bits
        counts = [0] * ((1 << bits) + 1)
        for b, c in Counter(map(rshift, first.points, repeat(self.shift))).items():
            counts[b + 1] = c
        self.starts = array("l", accumulate(counts))

    def walk(self, i: int) -> Iterator[tuple[int, int]]:
        """(tier number, shard index) of every shard of the view once, in probe order,
        starting at tier-0 position ``i``."""
        tiers = self.tiers
        anchor = tiers[0].points[i]
        for t, tier in enumerate(tiers):
            points, owners, size = tier.points, tier.owners, tier.size
            n = len(points)
            j = i if t == 0 else bisect_left(points, anchor)
            if j >= n:
                j = 0
            seen: set[int] = set()
            for k in chain(range(j, n), range(j)):
                s = owners[k]
                if s not in seen:
                    seen.add(s)
                    yield t, s
                    if len(seen) == size:
                        break
