"""Golden routing scenarios (tests/golden/routing/*.json): topology + loads + pins +
request → expected shard, reason, home and fallbacks, or the error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from shardroute import errors
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import Router, RoutingPolicy, fresh_loads
from shardroute.transport import InFlight

GOLDEN = Path(__file__).parent.parent / "golden" / "routing"
SCENARIOS = sorted(GOLDEN.glob("*.json"))


def shard(spec: dict[str, Any]) -> Shard:
    fields = dict(spec)
    if "state" in fields:
        fields["state"] = ShardState(fields["state"])
    fields.setdefault("address", f"{fields['id']}.local:7000")
    return Shard(**fields)


def topology(spec: dict[str, Any]) -> Topology:
    shards = sorted((shard(s) for s in spec["shards"]), key=lambda s: s.id)
    loads = {k: LoadReport(**v) for k, v in spec.get("loads", {}).items()}
    return Topology(
        service="golden",
        shards=MappingProxyType({s.id: s for s in shards}),
        loads=MappingProxyType(loads),
        config=spec.get("config"),
    )


def test_there_are_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 20


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "cold"])
def test_golden_scenario(path: Path, prepared: bool) -> None:
    scenario = json.loads(path.read_text())
    t = topology(scenario["topology"])
    router = Router(RoutingPolicy.from_mapping(scenario.get("policy", {})))
    if "now" in scenario:  # as the client's LoadBoard does: the reports that count
        heard = {k: LoadReport(**v) for k, v in scenario.get("trailers", {}).items()}
        fresh, _ = fresh_loads(t.loads, heard, scenario["now"], router.policy.max_report_age_s)
        t = replace(t, loads=MappingProxyType(fresh))
    flight = InFlight()
    if prepared:  # as the client does: ring built and in-flight excess kept per snapshot
        router.prepare(t)
        flight.rebase(router.basis(t))
    for shard_id, n in scenario.get("inflight", {}).items():
        flight.begin(shard_id, n)
    for key, shard_id in scenario.get("memo", {}).items():
        router.remember(key, shard_id)
    pins = router.memo.items()
    request = scenario["request"]
    expect = scenario["expect"]

    def route() -> Any:
        return router.route(
            request["session_key"],
            t,
            priority=request.get("priority", "standard"),
            zone=request.get("zone"),
            region=request.get("region"),
            excluded=scenario.get("excluded", ()),
            loads=flight,
        )

    if "error" in expect:
        with pytest.raises(getattr(errors, expect["error"])):
            route()
    else:
        for _ in range(2):  # the second time from the caches
            d = route()
            got = {
                "shard": d.shard.id,
                "reason": d.reason.value,
                "home": d.home.id,
                "fallbacks": [s.id for s in d.fallbacks],
            }
            assert got == expect, scenario["description"]
    assert router.memo.items() == pins  # routing wrote nothing
