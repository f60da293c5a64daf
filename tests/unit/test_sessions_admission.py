"""The shard's own check of the balance bound for new sessions (``routing.shard_bound``):
pure, on a topology and the shard's exact load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from shardroute.errors import ConfigError
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import Router, RoutingPolicy
from shardroute.sessions.admission import Admission

ON = {"routing": {"shard_bound": True, "spill_floor": 0}}
IDS = ("a", "b", "c", "d")


def topo(
    loads: Mapping[str, int], config: Mapping[str, Any] | None = ON, **states: ShardState
) -> Topology:
    shards = {
        i: Shard(id=i, address=f"h{i}:1", capacity=100, state=states.get(i, ShardState.ACTIVE))
        for i in IDS
    }
    reports = {k: LoadReport(inflight=v) for k, v in loads.items()}
    return Topology(
        "chat", shards=MappingProxyType(shards), loads=MappingProxyType(reports), config=config
    )


def admission(load: int) -> Admission:
    return Admission("a", lambda: load + 1)  # + the call asking


def test_over_the_bound_by_its_exact_load_it_names_the_routers_choice_without_itself() -> None:
    # reports: a shows 10 (stale), the others 10 each; a holds 16 in fact: total 46, the
    # bound for one more is 1.25 x 47 / 4 = 14.7, so a (17 with it) is over
    t = topo({"a": 10, "b": 10, "c": 10, "d": 10})
    for key in (f"k{i}" for i in range(20)):
        chosen = admission(16).target(key, t)
        expected = Router().route(key, t, excluded=("a",)).shard.id
        assert chosen == expected != "a"


def test_under_the_bound_or_the_spill_floor_it_takes_the_session() -> None:
    t = topo({"b": 10, "c": 10, "d": 10})
    # the router's test on the exact load: full when load >= c x (total + 1) / n
    assert admission(14).target("k", t) is None  # 14 < 1.25 x (44 + 1) / 4 = 14.06
    assert admission(15).target("k", t) is not None  # 15 >= 1.25 x (45 + 1) / 4 = 14.375
    floor = {"routing": {"shard_bound": True, "spill_floor": 0.5}}
    assert admission(40).target("k", topo({}, floor)) is None  # 40 < 50: under the floor
    assert admission(50).target("k", topo({}, floor)) is not None


def test_off_by_default_and_when_no_other_shard_may_take_it() -> None:
    assert admission(90).target("k", topo({}, None)) is None
    assert admission(90).target("k", topo({}, {"routing": {"shard_bound": False}})) is None
    draining = topo({}, b=ShardState.DRAINING, c=ShardState.DOWN, d=ShardState.DRAINING)
    assert admission(90).target("k", draining) is None
    t = topo({})
    gone = Topology("chat", shards=MappingProxyType({k: t.shards[k] for k in "bcd"}), config=ON)
    assert admission(90).target("k", gone) is None  # this shard is not in the topology


def test_shard_bound_is_a_routing_config_key() -> None:
    assert RoutingPolicy().shard_bound is False
    assert RoutingPolicy.from_config({"routing": {"shard_bound": True}}).shard_bound is True
    with pytest.raises(ConfigError, match="shard_bound must be true or false"):
        RoutingPolicy.from_config({"routing": {"shard_bound": 1}})
    assert replace(RoutingPolicy(), shard_bound=True) != RoutingPolicy()


def test_a_rejected_config_turns_the_check_off() -> None:
    bad = {"routing": {"shard_bound": True, "balance_factor": 0.5}}
    assert admission(90).target("k", topo({}, bad)) is None
    assert admission(90).target("k", topo({})) is not None  # a new, valid config: on again


def test_it_places_in_its_own_zone_first_as_a_client_there_would() -> None:
    zones = {"a": "za", "b": "za", "c": "zb", "d": "zb"}
    t = topo({"a": 10, "b": 10, "c": 10, "d": 10})
    shards = {i: replace(s, zone=zones[i], region="r1") for i, s in t.shards.items()}
    t = replace(t, shards=MappingProxyType(shards))
    chosen = {admission(16).target(f"k{i}", t) for i in range(40)}
    assert chosen == {"b"}  # b has room: the other zone is never chosen
