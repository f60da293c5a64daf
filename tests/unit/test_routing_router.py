"""Router: affinity, spill, memo, priorities, zones, health, accounting, live policy."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from shardroute.errors import ConfigError, NoShardAvailable, Overloaded
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import Decision, Reason, Router, RoutingPolicy
from shardroute.transport import InFlight

KEYS = [f"session-{i}" for i in range(200)]


def topo(
    shards: Iterable[Shard],
    loads: Mapping[str, int] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Topology:
    by_id = {s.id: s for s in sorted(shards, key=lambda s: s.id)}
    reports = {k: LoadReport(inflight=v) for k, v in (loads or {}).items()}
    return Topology(
        service="chat",
        shards=MappingProxyType(by_id),
        loads=MappingProxyType(reports),
        config=config,
    )


def flat(n: int, capacity: int = 100, **kw: Any) -> list[Shard]:
    return [Shard(id=f"s{i:02d}", address=f"h{i}:1", capacity=capacity, **kw) for i in range(n)]


def with_state(t: Topology, shard_id: str, state: ShardState) -> Topology:
    shards = dict(t.shards)
    shards[shard_id] = replace(shards[shard_id], state=state)
    return replace(t, shards=MappingProxyType(shards))


def with_loads(t: Topology, loads: Mapping[str, int]) -> Topology:
    return replace(t, loads=MappingProxyType({k: LoadReport(inflight=v) for k, v in loads.items()}))


# ------------------------------------------------------------------ affinity and fallbacks


def test_idle_cluster_routes_every_key_home() -> None:
    t = topo(flat(8))
    r = Router()
    for key in KEYS:
        d = r.route(key, t)
        assert d.reason is Reason.AFFINITY and d.shard == d.home
        assert d.shard == r.ring.home(key)
        assert d.shard not in d.fallbacks
        assert len(set(d.fallbacks)) == len(d.fallbacks) == min(7, r.policy.max_fallbacks)
        assert d.candidates == (d.shard, *d.fallbacks)
    assert len({r.route(k, t).shard.id for k in KEYS}) == 8
    assert len(r.memo) == 0  # nothing placed away from home: nothing remembered


def test_decision_is_immutable_value() -> None:
    d = Router().route("k", topo(flat(3)))
    with pytest.raises(AttributeError):
        d.shard = d.home  # type: ignore[misc]
    assert isinstance(d, Decision) and isinstance(d.fallbacks, tuple)


def test_fallbacks_skip_down_draining_and_respect_max() -> None:
    t = topo(flat(6))
    t = with_state(t, "s01", ShardState.DOWN)
    t = with_state(t, "s02", ShardState.DRAINING)
    r = Router(RoutingPolicy(max_fallbacks=10))
    for key in KEYS[:50]:
        d = r.route(key, t)
        ids = [s.id for s in d.candidates]
        assert "s01" not in ids and "s02" not in ids
        assert sorted(ids) == ["s00", "s03", "s04", "s05"]
    r0 = Router(RoutingPolicy(max_fallbacks=0))
    assert r0.route("k", t).fallbacks == ()


# ------------------------------------------------------------------ bounded loads and spill


def test_full_home_spills_and_the_session_stays_when_home_cools() -> None:
    shards = flat(4)
    r = Router()
    key = "session-42"
    home = r.route(key, topo(shards)).home.id
    hot = topo(shards, loads={home: 50})  # avg (50+1)/4 -> bound ceil(1.25*12.75)=16
    d = r.route(key, hot)
    r.settle(key, d)  # the call went there (the transport reports it)
    assert d.reason is Reason.SPILL and d.shard.id != home and d.home.id == home
    assert r.pinned(key) == d.shard.id
    cool = topo(shards, loads={})
    again = r.route(key, cool)
    assert again.reason is Reason.MEMO and again.shard == d.shard  # no bounce home
    assert again.home.id == home and again.shard not in again.fallbacks


def test_bound_uses_ceil_of_c_times_average_including_the_request() -> None:
    shards = flat(4)
    r = Router(RoutingPolicy(balance_factor=1.5, spill_floor=0))
    key = KEYS[0]
    home = r.route(key, topo(shards)).home.id
    others = [s.id for s in shards if s.id != home]
    # total other load 12, home h: avg = (12 + h + 1)/4, bound = ceil(1.5 * avg)
    for h in range(0, 20):
        loads = {home: h, **dict.fromkeys(others, 4)}
        bound = math.ceil(1.5 * (12 + h + 1) / 4)
        d = Router(RoutingPolicy(balance_factor=1.5, spill_floor=0)).route(key, topo(shards, loads))
        assert (d.shard.id == home) == (h + 1 <= bound), (h, bound, d.reason)


def test_weight_scales_the_fair_share() -> None:
    big = Shard(id="big", address="b:1", weight=3.0, capacity=1000)
    small = Shard(id="small", address="s:1", weight=1.0, capacity=1000)
    # total 51 (with the request), W = 4: big's bound = ceil(1.25*51*3/4) = 48,
    # small's = ceil(1.25*51/4) = 16. With equal weights both bounds would be 32.
    t = topo([big, small], loads={"big": 30, "small": 20})
    r = Router(RoutingPolicy(spill_floor=0))
    decisions = [r.route(k, t) for k in KEYS]
    assert {d.home.id for d in decisions} == {"big", "small"}
    assert all(d.shard.id == "big" for d in decisions)
    assert all(d.reason is Reason.SPILL for d in decisions if d.home.id == "small")


def test_in_flight_accounting_drives_spill_and_is_released() -> None:
    shards = flat(2, capacity=1000)
    t = topo(shards)
    r = Router(RoutingPolicy(spill_floor=0))
    flight = InFlight()  # the transport's count, the router's load input
    key = KEYS[3]
    home = r.route(key, t, loads=flight).shard.id
    other = next(s.id for s in shards if s.id != home)
    for _ in range(10):
        flight.begin(home)
    assert flight.count(home) == 10 and r.load(home, flight) == 10
    # total 10: bound for home = ceil(1.25 * 11 / 2) = 7 -> full
    d = r.route(key, t, loads=flight)
    assert d.shard.id == other and d.reason is Reason.SPILL
    r.forget(key)
    for _ in range(10):
        flight.end(home)
    flight.end(home)  # one too many: clamps at zero
    assert flight.count(home) == 0
    assert r.route(key, t, loads=flight).shard.id == home
    with flight.inflight(other):
        assert r.load(other, flight) == 1
    assert r.load(other, flight) == 0


def test_load_is_the_max_of_report_and_own_count() -> None:
    shards = flat(2)
    r = Router()
    t = topo(shards, loads={"s00": 5})
    flight = InFlight()
    r.prepare(t)
    flight.begin("s00", 3)
    assert r.load("s00", flight) == 5
    flight.begin("s00", 4)
    assert r.load("s00", flight) == 7
    t2 = replace(t, loads=MappingProxyType({"s00": LoadReport(inflight=2, queue_depth=20)}))
    r.prepare(t2)
    assert r.load("s00", flight) == 22


# ------------------------------------------------------------------ affinity memory


def test_memo_survives_until_the_shard_leaves_or_drains() -> None:
    shards = flat(4)
    t = topo(shards)
    r = Router()
    key = KEYS[7]
    home = r.route(key, t).home.id
    target = next(s.id for s in shards if s.id != home)
    r.remember(key, target)
    assert r.route(key, t).shard.id == target
    assert r.route(key, t).reason is Reason.MEMO

    draining = with_state(t, target, ShardState.DRAINING)
    d = r.route(key, draining)
    r.settle(key, d)  # the call went home
    assert d.shard.id == home and d.reason is Reason.AFFINITY
    assert r.pinned(key) is None  # pin dropped once re-placed home

    r.remember(key, target)
    gone = topo([s for s in shards if s.id != target])
    d = r.route(key, gone)
    r.settle(key, d)
    assert d.shard.id == home and r.pinned(key) is None

    r.remember(key, "no-such-shard")
    assert r.route(key, t).reason is Reason.AFFINITY


def test_memo_gives_way_at_the_hard_ceiling_not_at_the_balance_bound() -> None:
    shards = flat(4, capacity=10)
    r = Router()
    key = KEYS[9]
    home = r.route(key, topo(shards)).home.id
    target = next(s.id for s in shards if s.id != home)
    r.remember(key, target)
    # target way above c * avg but under the standard ceiling (9 of 10): stays
    d = r.route(key, topo(shards, loads={target: 8}))
    assert d.shard.id == target and d.reason is Reason.MEMO
    # at the ceiling: re-placed, home has room
    d = r.route(key, topo(shards, loads={target: 9}))
    r.settle(key, d)
    assert d.shard.id == home and r.pinned(key) is None


def test_memo_ttl_uses_the_injected_clock() -> None:
    now = [0.0]
    r = Router(RoutingPolicy(memo_ttl_s=30), clock=lambda: now[0])
    t = topo(flat(4))
    key = KEYS[11]
    home = r.route(key, t).home.id
    target = next(s for s in t.shards if s != home)
    r.remember(key, target)
    now[0] = 29.0
    d = r.route(key, t)
    r.settle(key, d)  # a call served by the pinned shard renews the pin
    assert d.shard.id == target  # used past half its TTL: refreshed
    now[0] = 58.0
    assert r.route(key, t).shard.id == target
    now[0] = 200.0
    assert r.route(key, t).shard.id == home


# ------------------------------------------------------------------ priorities


def test_priority_ceilings_reserve_capacity_and_shed_lower_classes_first() -> None:
    shards = flat(3, capacity=10)
    r = Router()
    at7 = topo(shards, loads=dict.fromkeys(["s00", "s01", "s02"], 7))
    with pytest.raises(Overloaded) as info:
        r.route("k", at7, priority="batch")
    assert info.value.retry_after_s == r.policy.retry_after_s
    assert "'batch'" in str(info.value) and "70%" in str(info.value)
    assert r.route("k", at7, priority="standard").shard.id in {"s00", "s01", "s02"}
    at9 = topo(shards, loads=dict.fromkeys(["s00", "s01", "s02"], 9))
    with pytest.raises(Overloaded):
        r.route("k", at9, priority="standard")
    assert r.route("k", at9, priority="critical").shard is not None
    at10 = topo(shards, loads=dict.fromkeys(["s00", "s01", "s02"], 10))
    with pytest.raises(Overloaded):
        r.route("k", at10, priority="critical")


def test_batch_spills_where_critical_stays_home() -> None:
    shards = flat(4, capacity=10)
    r = Router()
    key = KEYS[5]
    home = r.route(key, topo(shards)).home.id
    # home at 7 of 10, others at 6: within c * avg, above batch's 7
    t = topo(shards, loads={s.id: (7 if s.id == home else 6) for s in shards})
    assert r.route(key, t, priority="critical").shard.id == home
    d = r.route(key, t, priority="batch")
    assert d.shard.id != home and d.reason is Reason.SPILL


def test_unknown_priority_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown priority class 'gold'"):
        Router().route("k", topo(flat(2)), priority="gold")


# ------------------------------------------------------------------ zones


def zoned() -> list[Shard]:
    out = []
    for zone, region in (("z1", "r1"), ("z2", "r1"), ("z3", "r2")):
        for i in range(3):
            out.append(Shard(id=f"{zone}-{i}", address="x", zone=zone, region=region))
    return out


def test_caller_zone_first_then_region_then_rest() -> None:
    t = topo(zoned())
    r = Router(RoutingPolicy(max_fallbacks=20))
    for key in KEYS[:40]:
        d = r.route(key, t, zone="z1")
        assert d.shard.zone == "z1" and d.reason is Reason.AFFINITY
        zones = [s.zone for s in d.candidates]
        assert zones == ["z1"] * 3 + ["z2"] * 3 + ["z3"] * 3
    d = r.route("k", t, zone="z3")
    assert [s.zone for s in d.candidates[:3]] == ["z3"] * 3
    assert {s.zone for s in d.candidates[3:]} == {"z1", "z2"} and len(d.candidates) == 9


def test_explicit_region_and_unknown_zone() -> None:
    t = topo(zoned())
    r = Router(RoutingPolicy(max_fallbacks=20))
    d = r.route("k", t, region="r2")
    assert [s.region for s in d.candidates] == ["r2"] * 3 + ["r1"] * 6
    d = r.route("k", t, zone="nowhere")
    assert d.reason is Reason.AFFINITY and len(d.candidates) == 9


def test_zone_fallback_only_when_every_local_candidate_is_full_or_unavailable() -> None:
    shards = zoned()
    r = Router()
    z1 = [s.id for s in shards if s.zone == "z1"]
    z2 = [s.id for s in shards if s.zone == "z2"]
    # z1 full at the hard ceiling: go to z2 (same region), reason zone_fallback
    t = topo(shards, loads=dict.fromkeys(z1, 64))
    d = r.route("k", t, zone="z1")
    assert d.shard.zone == "z2" and d.reason is Reason.ZONE_FALLBACK and d.home.zone == "z1"
    r.forget("k")
    # z1 excluded (ejected) and z2 down: cross the region to z3
    t2 = topo(shards)
    for sid in z2:
        t2 = with_state(t2, sid, ShardState.DOWN)
    d = r.route("k", t2, zone="z1", excluded=z1)
    assert d.shard.zone == "z3" and d.reason is Reason.ZONE_FALLBACK
    assert all(s.zone == "z3" for s in d.fallbacks)


# ------------------------------------------------------------------ health


def test_down_draining_or_excluded_home_fails_over() -> None:
    t = topo(flat(5))
    r = Router()
    key = KEYS[13]
    first = r.route(key, t)
    home = first.home.id
    for state in (ShardState.DOWN, ShardState.DRAINING):
        d = r.route(key, with_state(t, home, state))
        assert d.reason is Reason.FAILOVER and d.shard.id != home and d.home.id == home
        assert d.shard == first.fallbacks[0]  # failover takes the next entry of the plan
        r.forget(key)
    d = r.route(key, t, excluded={home})
    assert d.reason is Reason.FAILOVER and d.shard == first.fallbacks[0]
    assert home not in {s.id for s in d.candidates}


def test_cached_decisions_do_not_survive_a_topology_change() -> None:
    t = topo(flat(3))
    r = Router()
    d1 = r.route("k", t)
    assert r.route("k", t) is d1  # warm path: the cached affinity decision
    down = with_state(t, d1.shard.id, ShardState.DOWN)
    assert r.route("k", down).shard != d1.shard


@pytest.mark.parametrize(
    "t",
    [
        topo([]),
        topo(flat(3, state=ShardState.DOWN)),
        topo(flat(2, state=ShardState.DRAINING)),
        topo(flat(3, weight=0.0)),
    ],
)
def test_nothing_available_raises_no_shard_available(t: Topology) -> None:
    with pytest.raises(NoShardAvailable):
        Router().route("k", t)
    with pytest.raises(NoShardAvailable):
        Router().route("k", t, zone="z1", priority="critical")


def test_everything_excluded_raises_no_shard_available() -> None:
    t = topo(flat(3))
    with pytest.raises(NoShardAvailable, match="down, draining, weightless or excluded"):
        Router().route("k", t, excluded=["s00", "s01", "s02"])


# ------------------------------------------------------------------ live policy


def test_policy_follows_the_config_and_keeps_the_last_good_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = RoutingPolicy(max_fallbacks=2)
    r = Router(base)
    shards = flat(3)
    r.prepare(topo(shards, config={"routing": {"balance_factor": 2.0}}))
    assert r.policy.balance_factor == 2.0 and r.policy.max_fallbacks == 2
    assert r.config_error is None
    with caplog.at_level(logging.ERROR, logger="shardroute.routing"):
        for _ in range(3):  # a new snapshot each time, same bad content: logged once
            r.prepare(topo(shards, config={"routing": {"balance_factor": 0.9}}))
    assert r.policy.balance_factor == 2.0
    assert isinstance(r.config_error, ConfigError)
    assert "balance_factor" in str(r.config_error)
    assert len([m for m in caplog.records if m.name == "shardroute.routing"]) == 1
    r.prepare(topo(shards, config={"routing": {"balance_factor": 3.0}}))
    assert r.policy.balance_factor == 3.0 and r.config_error is None
    r.prepare(topo(shards, config=None))
    assert r.policy == base


def test_config_change_resizes_the_memo_and_keeps_pins() -> None:
    r = Router()
    shards = flat(3)
    r.prepare(topo(shards))
    r.remember("a", "s01")
    r.prepare(topo(shards, config={"routing": {"memo_size": 5, "memo_ttl_s": 10}}))
    assert r.memo.maxsize == 5 and r.memo.ttl_s == 10
    assert r.pinned("a") == "s01"
    assert (
        r.route("a", topo(shards, config={"routing": {"memo_size": 5, "memo_ttl_s": 10}})).reason
        is Reason.MEMO
    )


def test_vnodes_change_rebuilds_the_ring() -> None:
    r = Router()
    shards = flat(3)
    r.prepare(topo(shards))
    assert len(r.ring.points) == 3 * 160
    r.prepare(topo(shards, config={"routing": {"vnodes_per_weight": 10}}))
    assert len(r.ring.points) == 30


def test_equal_shards_mapping_reuses_the_ring() -> None:
    r = Router()
    shards = flat(4)
    r.prepare(topo(shards))
    ring = r.ring
    r.prepare(topo(shards, loads={"s00": 3}))  # new mapping objects, same shards
    assert r.ring is ring
    r.prepare(topo([*shards, Shard(id="s99", address="x")]))
    assert r.ring is not ring and len(r.ring) == 5


def test_spill_floor_keeps_small_loads_home() -> None:
    shards = [Shard(f"s{i}", f"h:{i + 1}", capacity=64) for i in range(3)]
    key = "conv-floor"
    home = Router(RoutingPolicy(spill_floor=0)).route(key, topo(shards, {})).shard.id
    loads = {home: 1}  # one request in flight in the whole service, at the home
    plain = Router(RoutingPolicy(spill_floor=0)).route(key, topo(shards, loads))
    assert plain.shard.id != home and plain.reason is Reason.SPILL  # c x average of 1 call
    floored = Router(RoutingPolicy(spill_floor=0.1)).route(key, topo(shards, loads))
    assert floored.shard.id == home and floored.reason is Reason.AFFINITY
    busy = {home: 7}  # 7 >= floor(0.1 x 64) = 6: the balance bound applies again
    assert Router().route(key, topo(shards, busy)).shard.id != home
    with pytest.raises(ConfigError, match="spill_floor"):
        RoutingPolicy(spill_floor=1.5)
