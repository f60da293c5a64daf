"""Property tests of the router: bounds, ceilings, zone order, no IndexError ever."""

from __future__ import annotations

import math
from fractions import Fraction
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from shardroute.errors import NoShardAvailable, Overloaded
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import Reason, Router, RoutingPolicy
from shardroute.transport import InFlight

STATES = st.sampled_from(
    [ShardState.ACTIVE, ShardState.ACTIVE, ShardState.DOWN, ShardState.DRAINING]
)


def topology(shards: list[Shard], loads: dict[str, int]) -> Topology:
    return Topology(
        service="chat",
        shards=MappingProxyType({s.id: s for s in sorted(shards, key=lambda s: s.id)}),
        loads=MappingProxyType({k: LoadReport(inflight=v) for k, v in loads.items()}),
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=24),
    c=st.floats(min_value=1.05, max_value=3.0),
    weights=st.lists(st.sampled_from([0.5, 1.0, 1.0, 2.0]), min_size=24, max_size=24),
    initial=st.lists(st.integers(min_value=0, max_value=30), min_size=24, max_size=24),
    sessions=st.integers(min_value=1, max_value=600),
)
def test_no_shard_is_pushed_above_ceil_c_times_its_fair_share(
    n: int, c: float, weights: list[float], initial: list[int], sessions: int
) -> None:
    shards = [Shard(id=f"s{i}", address="x", weight=weights[i], capacity=10**6) for i in range(n)]
    t = topology(shards, {f"s{i}": initial[i] for i in range(n)})
    r = Router(RoutingPolicy(balance_factor=c, memo_size=10**6, spill_floor=0))
    flight = InFlight()  # the transport's in-flight count, kept relative to the reports
    flight.rebase(r.basis(t))
    w_total = sum(weights[:n])
    for k in range(sessions):
        before = {s.id: r.load(s.id, flight) for s in shards}
        total = sum(before.values())
        d = r.route(f"user-{k}", t, priority="critical", loads=flight)
        chosen = d.shard.id
        exact = Fraction(c) * (total + 1) * Fraction(d.shard.weight) / Fraction(w_total)
        bound = math.ceil(exact)  # exact rationals: no float rounding in the oracle
        assert before[chosen] + 1 <= bound, (chosen, before[chosen], bound)
        if d.reason is Reason.AFFINITY:
            assert chosen == d.home.id
        flight.begin(chosen)  # the request is in flight: the client's own count rises


@settings(max_examples=80, deadline=None)
@given(
    caps=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8),
    loads=st.lists(st.integers(min_value=0, max_value=22), min_size=8, max_size=8),
    states=st.lists(STATES, min_size=8, max_size=8),
    priority=st.sampled_from(["batch", "standard", "critical"]),
    key=st.text(max_size=12),
)
def test_priority_ceilings_are_honoured(
    caps: list[int], loads: list[int], states: list[ShardState], priority: str, key: str
) -> None:
    shards = [
        Shard(id=f"s{i}", address="x", capacity=cap, state=states[i]) for i, cap in enumerate(caps)
    ]
    t = topology(shards, {f"s{i}": loads[i] for i in range(len(caps))})
    r = Router()
    ceiling = r.policy.priority_ceilings[priority]
    active = [s for s in shards if s.state is ShardState.ACTIVE]

    def fits(s: Shard) -> bool:
        return loads[int(s.id[1:])] + 1 <= ceiling * s.capacity + 1e-9

    try:
        d = r.route(key, t, priority=priority)
    except NoShardAvailable:
        assert not active
    except Overloaded:
        assert active and not any(fits(s) for s in active)
    else:
        assert d.shard.state is ShardState.ACTIVE and fits(d.shard)
        assert all(s.state is ShardState.ACTIVE for s in d.fallbacks)


@settings(max_examples=60, deadline=None)
@given(
    zones=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=12),
    states=st.lists(STATES, min_size=12, max_size=12),
    excluded=st.sets(st.integers(min_value=0, max_value=11), max_size=6),
    caller=st.sampled_from(["a", "b", "c", "d", "e"]),
    key=st.text(max_size=8),
    explicit_region=st.booleans(),
)
def test_zone_then_region_then_rest(
    zones: list[str],
    states: list[ShardState],
    excluded: set[int],
    caller: str,
    key: str,
    explicit_region: bool,
) -> None:
    region = {"a": "r1", "b": "r1", "c": "r2", "d": "r2"}
    shards = [
        Shard(id=f"s{i:02d}", address="x", zone=z, region=region[z], state=states[i])
        for i, z in enumerate(zones)
    ]
    t = topology(shards, {})
    ex = {f"s{i:02d}" for i in excluded}
    r = Router(RoutingPolicy(max_fallbacks=12))
    usable = [s for s in shards if s.state is ShardState.ACTIVE and s.id not in ex]
    # Without an explicit region, the router derives it from the zone's shards.
    caller_region = region.get(caller) if explicit_region or caller in zones else None
    try:
        d = r.route(
            key, t, zone=caller, region=region.get(caller) if explicit_region else None, excluded=ex
        )
    except NoShardAvailable:
        assert not usable
        return

    def tier(s: Shard) -> int:
        return 0 if s.zone == caller else 1 if s.region == caller_region else 2

    # Nothing is loaded: the choice is the nearest usable tier, the plan is tier-ordered
    assert tier(d.shard) == min(tier(s) for s in usable)
    tiers = [tier(s) for s in d.candidates]
    assert tiers == sorted(tiers)
    assert sorted(s.id for s in d.candidates) == sorted(s.id for s in usable)
    if d.reason is Reason.ZONE_FALLBACK:
        assert tier(d.shard) > tier(d.home)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=6),
    states=st.lists(STATES, min_size=6, max_size=6),
    weights=st.lists(st.sampled_from([0.0, 1.0]), min_size=6, max_size=6),
    key=st.text(max_size=8),
    zone=st.none() | st.sampled_from(["z0", "z1", ""]),
)
def test_never_an_index_error(
    n: int, states: list[ShardState], weights: list[float], key: str, zone: str | None
) -> None:
    shards = [
        Shard(id=f"s{i}", address="x", zone=f"z{i % 2}", state=states[i], weight=weights[i])
        for i in range(n)
    ]
    routable = [s for s in shards if s.state is ShardState.ACTIVE and s.weight > 0]
    try:
        d = Router().route(key, topology(shards, {}), zone=zone)
    except NoShardAvailable:
        assert not routable
    else:
        assert d.shard in routable
