"""The consistent-hash ring: virtual nodes in proportion to weight, built once per topology."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xxhash import xxh3_64_intdigest

from shardroute.model import Shard

__all__ = ["HashRing", "key_hash"]

_IDX_BITS = 20  # a ring holds at most 2**20 shards; ties between points sort by shard index
_IDX_MASK = (1 << _IDX_BITS) - 1


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


def shard_points(shard_id: str, count: int) -> tuple[int, ...]:
    """The ring points of a shard: XXH3-64 (seed 0) of ``"<shard id>#<n>"`` for n < count.

    A shard's points depend only on its id and its vnode count, so adding or removing
    a shard moves only the keys on its own arcs. (Not XXH3 with seeds 0..count-1: on
    short ids those points come out correlated and some shards get no share at all.)
    """
    return tuple(
        [
            xxh3_64_intdigest(f"{shard_id}#{n}".encode("utf-8", "surrogatepass"))
            for n in range(count)
        ]
    )


@dataclass(frozen=True, slots=True, eq=False)
class HashRing:
    """An immutable ring over one set of shards. Build with :meth:`build`.

    ``shards`` are in id order; ``points`` is sorted and ``owners[i]`` is the index
    in ``shards`` of the shard owning ``points[i]``. A key belongs to the first point
    at or after its hash, wrapping around. Shards of every state are on the ring, so
    a shard that goes down and comes back gets its keys back; the router skips
    shards that cannot take sessions.
    """

    shards: tuple[Shard, ...]
    index: Mapping[str, int]
    points: tuple[int, ...]
    owners: tuple[int, ...]
    vnodes_per_weight: int
    source: Mapping[str, Shard] = field(repr=False)
    """The shards mapping the ring was built from (compared to decide on a rebuild)."""
    shard_points: Mapping[str, tuple[int, ...]] = field(repr=False)
    """Each shard's own points, reused by the next build for unchanged shards."""

    @classmethod
    def build(
        cls,
        shards: Mapping[str, Shard],
        vnodes_per_weight: int,
        previous: HashRing | None = None,
    ) -> HashRing:
        """Build a ring. Pass the previous ring to reuse the points of unchanged shards."""
        ordered = tuple(sorted(shards.values(), key=lambda s: s.id))
        if len(ordered) > _IDX_MASK:
            raise ValueError(f"a ring holds at most {_IDX_MASK} shards, got {len(ordered)}")
        reuse: Mapping[str, tuple[int, ...]] = {}
        if previous is not None and previous.vnodes_per_weight == vnodes_per_weight:
            reuse = previous.shard_points
        per_shard: dict[str, tuple[int, ...]] = {}
        packed: list[int] = []
        for idx, shard in enumerate(ordered):
            count = vnode_count(shard, vnodes_per_weight)
            pts = reuse.get(shard.id)
            if pts is None or len(pts) != count:
                pts = shard_points(shard.id, count)
            per_shard[shard.id] = pts
            packed.extend([(p << _IDX_BITS) | idx for p in pts])
        packed.sort()
        return cls(
            shards=ordered,
            index=MappingProxyType({s.id: i for i, s in enumerate(ordered)}),
            points=tuple([x >> _IDX_BITS for x in packed]),
            owners=tuple([x & _IDX_MASK for x in packed]),
            vnodes_per_weight=vnodes_per_weight,
            source=shards,
            shard_points=MappingProxyType(per_shard),
        )

    def __len__(self) -> int:
        return len(self.shards)

    def home(self, key: str) -> Shard | None:
        """The shard owning ``key`` on the whole ring, whatever its state; None if empty."""
        points = self.points
        if not points:
            return None
        i = bisect_left(points, key_hash(key))
        return self.shards[self.owners[i if i < len(points) else 0]]
