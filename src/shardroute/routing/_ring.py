"""The consistent-hash ring: virtual nodes in proportion to weight, built once per topology.

Compact: the sorted points are one ``array('Q')`` of unsigned 64-bit integers and their
owners one ``array('I')`` of shard indices, 12 bytes a point instead of two Python ints
(about 80), so a 10,000-shard ring is a few megabytes. A rebuild from the previous ring
that changes a few shards (one lost, one added, a state change) filters and merges the
two arrays instead of hashing and sorting every point again.
"""

from __future__ import annotations

import weakref
from array import array
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from operator import and_, rshift
from types import MappingProxyType
from typing import Any

from xxhash import xxh3_64_intdigest

from shardroute.model import Shard

__all__ = ["HashRing", "key_hash", "shard_points", "vnode_count"]

_IDX_BITS = 20  # a ring holds at most 2**20 shards; ties between points sort by shard index
_IDX_MASK = (1 << _IDX_BITS) - 1
_INCREMENTAL_SHARE = 0.25  # rebuild from scratch when more points than this share change
_SUFFIXES: list[bytes] = []  # b"#0", b"#1", ...: the point suffixes, grown on demand


def key_hash(key: str) -> int:
    """The 64-bit ring position of a session key: XXH3-64 of its UTF-8 bytes, seed 0.

    The same in every process and on every platform (never Python's salted ``hash()``).
    """
    try:
        data = key.encode()
    except UnicodeEncodeError:  # lone surrogates: still route, deterministically
        data = key.encode("utf-8", "surrogatepass")
    return xxh3_64_intdigest(data)


def vnode_count(shard: Shard, vnodes_per_weight: int) -> int:
    """Ring points of a shard: ``round(weight * vnodes_per_weight)``, at least 1 if weight > 0."""
    if not shard.weight > 0:
        return 0
    return max(1, round(shard.weight * vnodes_per_weight))


def _suffixes(count: int) -> list[bytes]:
    while len(_SUFFIXES) < count:
        _SUFFIXES.append(f"#{len(_SUFFIXES)}".encode())
    return _SUFFIXES[:count]


def shard_points(shard_id: str, count: int) -> list[int]:
    """The ring points of a shard: XXH3-64 (seed 0) of ``"<shard id>#<n>"`` for n < count.

    A shard's points depend only on its id and its vnode count, so adding or removing
    a shard moves only the keys on its own arcs. (Not XXH3 with seeds 0..count-1: on
    short ids those points come out correlated and some shards get no share at all.)
    """
    prefix = shard_id.encode("utf-8", "surrogatepass")
    return [xxh3_64_intdigest(prefix + suffix) for suffix in _suffixes(count)]


def _sorted_arrays(packed: list[int]) -> tuple[array[int], array[int]]:
    """Sort ``point << 20 | index`` values; return (points, owners) arrays.

    The values are first split by the top bits of the point into buckets of about
    2,000 (the points are uniform hashes), and each bucket is sorted and unpacked on
    its own: the same result as one sort, about twice as fast on large rings, because
    each bucket's values stay in the CPU cache while they are compared and unpacked.
    """
    bits = max(0, (len(packed) // 2048).bit_length())
    shift = 64 + _IDX_BITS - bits
    buckets: list[list[int]] = [[] for _ in range(1 << bits)]
    append = [b.append for b in buckets]
    for x in packed:
        append[x >> shift](x)
    points: array[int] = array("Q")
    owners: array[int] = array("I")
    for bucket in buckets:
        bucket.sort()
        points.extend(map(rshift, bucket, repeat(_IDX_BITS)))
        owners.extend(map(and_, bucket, repeat(_IDX_MASK)))
    return points, owners


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class HashRing:
    """An immutable ring over one set of shards. Build with :meth:`build`.

    ``shards`` are in id order; ``points`` is sorted (an ``array('Q')``) and
    ``owners[i]`` (an ``array('I')``) is the index in ``shards`` of the shard owning
    ``points[i]``; equal points are ordered by that index. A key belongs to the first
    point at or after its hash, wrapping around. Shards of every state are on the
    ring, so a shard that goes down and comes back gets its keys back; the router
    skips shards that cannot take sessions. Treat the arrays as read-only.
    """

    shards: tuple[Shard, ...]
    index: Mapping[str, int]
    points: array[int]
    owners: array[int]
    vnodes_per_weight: int
    source: Mapping[str, Shard] = field(repr=False)
    """The shards mapping the ring was built from (compared to decide on a rebuild)."""
    counts: tuple[int, ...] = field(repr=False)
    """Each shard's number of points, by index."""
    views: dict[Any, Any] = field(repr=False, default_factory=dict)
    """Data derived from this ring alone (the router's per-location views), shared by
    every router that uses the ring."""

    @classmethod
    def build(
        cls,
        shards: Mapping[str, Shard],
        vnodes_per_weight: int,
        previous: HashRing | None = None,
    ) -> HashRing:
        """Build a ring. Pass the previous ring to reuse its points: when few shards
        changed, their points are removed from and merged into its arrays.

        Rings built in one process from the very same read-only ``shards`` mapping (a
        ``MappingProxyType``, as a topology snapshot's is), as several routers fed the
        same snapshot do, are one ring, built once.
        """
        shareable = isinstance(shards, MappingProxyType)  # a snapshot's: never changes
        cached = _LAST.get((id(shards), vnodes_per_weight)) if shareable else None
        if cached is not None and cached.source is shards:
            return cached
        ordered = tuple(sorted(shards.values(), key=lambda s: s.id))
        if len(ordered) > _IDX_MASK:
            raise ValueError(f"a ring holds at most {_IDX_MASK} shards, got {len(ordered)}")
        counts = tuple(vnode_count(s, vnodes_per_weight) for s in ordered)
        arrays = None
        if previous is not None and previous.vnodes_per_weight == vnodes_per_weight:
            arrays = _rebuild(previous, ordered, counts)
        if arrays is None:
            packed: list[int] = []
            for idx, (shard, count) in enumerate(zip(ordered, counts, strict=True)):
                packed += [(p << _IDX_BITS) | idx for p in shard_points(shard.id, count)]
            arrays = _sorted_arrays(packed)
        ring = cls(
            shards=ordered,
            index=MappingProxyType({s.id: i for i, s in enumerate(ordered)}),
            points=arrays[0],
            owners=arrays[1],
            vnodes_per_weight=vnodes_per_weight,
            source=shards,
            counts=counts,
        )
        if shareable:
            _LAST.clear()
            _LAST[(id(shards), vnodes_per_weight)] = ring
        return ring

    def __len__(self) -> int:
        return len(self.shards)

    def home(self, key: str) -> Shard | None:
        """The shard owning ``key`` on the whole ring, whatever its state; None if empty."""
        points = self.points
        if not points:
            return None
        i = bisect_left(points, key_hash(key))
        return self.shards[self.owners[i if i < len(points) else 0]]


_LAST: weakref.WeakValueDictionary[tuple[int, int], HashRing] = weakref.WeakValueDictionary()
"""The last ring built in this process, while anything still uses it."""


def _rebuild(
    previous: HashRing, ordered: tuple[Shard, ...], counts: tuple[int, ...]
) -> tuple[array[int], array[int]] | None:
    """The arrays of the ring over ``ordered`` from ``previous``'s, or None when so many
    points change that building from scratch is as cheap.

    The points of shards that left (or changed their count) are found by hashing them
    again and dropped, the new ones merged in, and the owners renumbered: a few
    copies of the arrays, no sort of the whole ring.
    """
    old_index = previous.index
    remap = [0] * len(previous.shards)  # old index -> new index (0 for dropped shards)
    kept = [False] * len(previous.shards)
    added: list[int] = []  # new indices whose points come in
    changed = 0
    for idx, (shard, count) in enumerate(zip(ordered, counts, strict=True)):
        old = old_index.get(shard.id)
        if old is not None and previous.counts[old] == count:
            remap[old], kept[old] = idx, True
        elif count:
            added.append(idx)
            changed += count
    removed = [old for old, k in enumerate(kept) if not k and previous.counts[old]]
    changed += sum(previous.counts[old] for old in removed)
    if changed > _INCREMENTAL_SHARE * max(1, len(previous.points)):
        return None
    points, owners = previous.points, previous.owners
    drop = sorted(
        _position(points, owners, p, old)
        for old in removed
        for p in shard_points(previous.shards[old].id, previous.counts[old])
    )
    if remap != list(range(len(remap))):
        owners = array("I", map(remap.__getitem__, owners))
    inserts = []
    for x in sorted(
        (p << _IDX_BITS) | idx for idx in added for p in shard_points(ordered[idx].id, counts[idx])
    ):
        p, o = x >> _IDX_BITS, x & _IDX_MASK
        pos = bisect_left(points, p)
        while pos < len(points) and points[pos] == p and owners[pos] < o:
            pos += 1
        inserts.append((pos, p, o))
    if not drop and not inserts:
        return points, owners
    return _splice(points, owners, drop, inserts)


def _position(points: array[int], owners: array[int], point: int, owner: int) -> int:
    """Where ``point`` of shard index ``owner`` is in the arrays (it is there)."""
    pos = bisect_left(points, point)
    while owners[pos] != owner:  # equal points of other shards
        pos += 1
    return pos


def _splice(
    points: array[int],
    owners: array[int],
    drop: list[int],
    inserts: list[tuple[int, int, int]],
) -> tuple[array[int], array[int]]:
    """The arrays without the positions in ``drop`` and with each (position, point,
    owner) of ``inserts`` placed before the old entry at that position (both sorted)."""
    out_p: array[int] = array("Q")
    out_o: array[int] = array("I")
    events = sorted([(pos, 0, 0, 0) for pos in drop] + [(pos, 1, p, o) for pos, p, o in inserts])
    start = 0
    for pos, kind, p, o in events:
        if pos > start:
            out_p += points[start:pos]
            out_o += owners[start:pos]
            start = pos
        if kind == 0:
            start = pos + 1
        else:
            out_p.append(p)
            out_o.append(o)
    out_p += points[start:]
    out_o += owners[start:]
    return out_p, out_o
