"""Router-side scaling signals (issue 12): decisions at a priority ceiling and refusals.

The router marks a decision that passed over the home because the home was at the ceiling
of the request's priority (``Decision.home_at_ceiling``); the client counts those decisions
(``at_ceiling``) and the router's ``Overloaded`` refusals (``overloaded``) in ``CallStats``,
on the plain path and the recorded one; ``RouterSignals`` turns them into shares and the
spill policy and the gauges show them. Real ``Router``, in-memory topology, no-op channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from test_client_hot_path import EchoStub, _DoneCall

from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import Overloaded
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import Reason, Router
from shardroute.scaling import (
    FleetSignals,
    RouterSignals,
    ShardSignals,
    SignalHistory,
    SpillPolicy,
)
from shardroute.scaling.advisor import ScalingAdvice
from shardroute.scaling.autoscaler import ROUTER_GAUGES, DesiredShardsGauge
from shardroute.telemetry import names
from shardroute.testing.otel import OtelCapture
from shardroute.transport import ChannelPool

KEYS = [f"conv-{i}" for i in range(200)]


class _Echo:
    """grpc's unary multi-callable: called, or ``with_call`` for (response, call)."""

    def __call__(self, request: bytes, timeout: Any = None, metadata: Any = None) -> bytes:
        return request

    def with_call(self, request: bytes, timeout: Any = None, metadata: Any = None) -> Any:
        return request, _DoneCall()


class NoopChannel:
    def unary_unary(self, path: str, **_: Any) -> Callable[..., bytes]:
        return _Echo()


def shards(n: int = 4, capacity: int = 10, **kw: Any) -> list[Shard]:
    return [Shard(f"s{i}", f"h{i}:1", capacity=capacity, **kw) for i in range(n)]


def topo(given: list[Shard], loads: Mapping[str, int] | None = None) -> Topology:
    return Topology(
        service="chat",
        shards=MappingProxyType({s.id: s for s in given}),
        loads=MappingProxyType({k: LoadReport(inflight=v) for k, v in (loads or {}).items()}),
    )


def home_of(key: str, given: list[Shard]) -> str:
    return Router().route(key, topo(given)).home.id


# ------------------------------------------------------------------ the router's mark


def test_a_spill_past_a_home_at_the_priority_ceiling_is_marked() -> None:
    given = shards()
    key = KEYS[3]
    home = home_of(key, given)
    # home at 7 of 10 (batch's ceiling), the others at 6: within c x average
    t = topo(given, {s.id: 7 if s.id == home else 6 for s in given})
    d = Router().route(key, t, priority="batch")
    assert d.reason is Reason.SPILL and d.shard.id != home and d.home_at_ceiling
    # the same loads are under standard's ceiling (9): home, no mark
    d = Router().route(key, t, priority="standard")
    assert d.reason is Reason.AFFINITY and not d.home_at_ceiling


def test_a_spill_for_the_balance_bound_is_not_marked() -> None:
    given = shards(capacity=100)
    key = KEYS[4]
    home = home_of(key, given)
    # home at 40 of 100, the others idle: far over c x average, far under any ceiling
    d = Router().route(key, topo(given, {home: 40}), priority="batch")
    assert d.reason is Reason.SPILL and not d.home_at_ceiling


def test_failover_and_memo_decisions_are_not_marked() -> None:
    given = shards()
    key = KEYS[5]
    home = home_of(key, given)
    down = [
        Shard(s.id, s.address, capacity=10, state=ShardState.DOWN) if s.id == home else s
        for s in given
    ]
    d = Router().route(key, topo(down), priority="batch")
    assert d.reason is Reason.FAILOVER and not d.home_at_ceiling
    d = Router().route(key, topo(given, {home: 7}), priority="batch", excluded=[home])
    assert d.reason is Reason.FAILOVER and not d.home_at_ceiling  # excluded, not full
    r = Router()
    target = next(s.id for s in given if s.id != home)
    r.remember(key, target)
    d = r.route(key, topo(given, {home: 7}), priority="batch")
    assert d.reason is Reason.MEMO and not d.home_at_ceiling  # the home was not consulted


def test_a_zone_fallback_past_a_full_home_zone_is_marked() -> None:
    given = [
        *(Shard(f"a{i}", "x:1", capacity=10, zone="a", region="r") for i in range(2)),
        *(Shard(f"b{i}", "x:1", capacity=10, zone="b", region="r") for i in range(2)),
    ]
    d = Router().route("k", topo(given, {"a0": 7, "a1": 7}), priority="batch", zone="a")
    assert d.reason is Reason.ZONE_FALLBACK and d.home.zone == "a" and d.home_at_ceiling


# ------------------------------------------------------------------ the client's counts


def noop_client(source: InMemoryTopologySource, **kwargs: Any) -> ShardClient:
    client = ShardClient(source, timeout=5, **kwargs)
    client._core.channels = ChannelPool(lambda shard: NoopChannel(), lambda channel: None)
    return client


@pytest.fixture
def plain() -> Iterator[tuple[ShardClient, InMemoryTopologySource]]:
    source = InMemoryTopologySource("chat", shards())
    with noop_client(source) as client:
        yield client, source


def put_loads(source: InMemoryTopologySource, loads: Mapping[str, int]) -> None:
    for shard_id, n in loads.items():
        source.put_load(shard_id, LoadReport(inflight=n))


def exercise(client: ShardClient, source: InMemoryTopologySource) -> str:
    """Drive every case once; returns the key that spilled at its ceiling."""
    echo = client.stub(EchoStub).Echo
    given = list(source.current().shards.values())
    key = KEYS[7]
    home = home_of(key, given)
    for k in KEYS[:10]:  # ordinary calls: counted as calls only
        echo(b"x", session_key=k)
        echo(b"x", session_key=k, priority="batch")
    assert client.stats.snapshot().keys() == {"calls", "affinity"}
    put_loads(source, {s.id: 7 if s.id == home else 6 for s in given})
    echo(b"x", session_key=key, priority="standard")  # under standard's ceiling: home
    echo(b"x", session_key=key, priority="batch")  # home at batch's ceiling: spills
    echo(b"x", session_key=key, priority="batch")  # pinned where it spilled: memo
    put_loads(source, dict.fromkeys([s.id for s in given], 7))
    with pytest.raises(Overloaded):
        echo(b"x", session_key=KEYS[8], priority="batch")
    return key


def test_the_plain_path_counts_ceiling_decisions_and_refusals_only(
    plain: tuple[ShardClient, InMemoryTopologySource],
) -> None:
    client, source = plain
    exercise(client, source)
    stats = client.stats.snapshot()
    assert stats["at_ceiling"] == 1 and stats["spill"] == 1 and stats["memo"] == 1
    assert stats["overloaded"] == 1  # refused before anything was sent...
    assert stats["calls"] == 23 and "errors" not in stats  # ...so not a call, not an error


def test_a_balance_spill_is_not_counted_at_the_ceiling() -> None:
    given = shards(capacity=100)
    source = InMemoryTopologySource("chat", given)
    key = KEYS[9]
    put_loads(source, {home_of(key, given): 40})  # over c x average, under every ceiling
    with noop_client(source) as client:
        client.stub(EchoStub).Echo(b"x", session_key=key, priority="batch")
        stats = client.stats.snapshot()
    assert stats["spill"] == 1 and "at_ceiling" not in stats


def test_the_recorded_path_counts_the_same_and_the_metrics_show_them() -> None:
    capture = OtelCapture()
    source = InMemoryTopologySource("chat", shards())
    client = noop_client(source, telemetry=capture.telemetry())
    try:
        exercise(client, source)
        stats = client.stats.snapshot()
        assert stats["at_ceiling"] == 1 and stats["overloaded"] == 1 and stats["calls"] == 23
        assert capture.value(names.AT_CEILING, {names.PRIORITY: "batch"}) == 1
        assert capture.value(names.AT_CEILING, {names.PRIORITY: "standard"}) == 0
        assert capture.value(names.OVERLOADED, {names.PRIORITY: "batch"}) == 1
    finally:
        client.close()
        capture.shutdown()


# ------------------------------------------------------------------ the scaling signals


def test_router_signals_give_the_share_of_decisions_at_a_ceiling() -> None:
    first = RouterSignals.between({"calls": 100, "spill": 10}, None)
    assert first.decisions == 100 and first.ceiling_share == 0 and first.overloaded == 0
    now = {"calls": 190, "spill": 40, "at_ceiling": 20, "overloaded": 10, "errors": 5}
    second = RouterSignals.between(now, first)
    assert second.calls == 90 and second.overloaded == 10 and second.decisions == 100
    assert second.ceiling_share == pytest.approx(0.30)  # (20 at ceiling + 10 refused) / 100
    assert second.overloaded_share == pytest.approx(0.10)
    assert second.spill_share == pytest.approx(0.30) and second.error_share == pytest.approx(0.05)
    only_refused = RouterSignals.between({**now, "overloaded": 30}, second)
    assert only_refused.decisions == 20 and only_refused.ceiling_share == 1.0


def fleet(ts: float, router: RouterSignals | None) -> FleetSignals:
    running = tuple(
        ShardSignals(f"s{i}", "a", ShardState.ACTIVE, 10, reported=True, ts=ts) for i in range(3)
    )
    return FleetSignals(ts, running, router=router)


def test_the_spill_policy_counts_refusals_and_names_the_ceiling_share() -> None:
    policy = SpillPolicy(max_share=0.25, intervals=2, min_calls=10)
    refused = RouterSignals(
        {}, 60, 0.1, 0.0, overloaded=40, ceiling_share=0.5, overloaded_share=0.4
    )
    history = SignalHistory().appended(fleet(0, refused)).appended(fleet(10, refused))
    vote = policy.vote(history, 3)
    assert vote.desired == 4  # 10 % spills + 40 % refused: over 25 % in both intervals
    assert "50% of decisions at a priority ceiling (40 refused as Overloaded)" in vote.reason
    calm = RouterSignals({}, 100, 0.05)
    history = SignalHistory().appended(fleet(0, calm)).appended(fleet(10, calm))
    vote = policy.vote(history, 3)
    assert vote.desired is None and "0% of decisions at a priority ceiling" in vote.reason


def test_the_gauge_reports_router_signals_only_when_the_sample_has_them() -> None:
    capture = OtelCapture()
    gauge = DesiredShardsGauge(capture.meter_provider.get_meter("shardroute"))
    advice = ScalingAdvice(0.0, 3, 3, MappingProxyType({"a": 3}), ())
    try:
        gauge.publish(advice, fleet(0, None))
        assert all(capture.points(name) == [] for name in ROUTER_GAUGES)
        signals = RouterSignals({}, 80, 0.25, 0.0, 3, 0, 20, 0.45, 0.2)
        gauge.publish(advice, fleet(10, signals))
        assert capture.value("shardroute_router_ceiling_share") == pytest.approx(0.45)
        assert capture.value("shardroute_router_overloaded_share") == pytest.approx(0.2)
        assert capture.value("shardroute_router_spill_share") == pytest.approx(0.25)
        assert capture.value("shardroute_router_failovers") == 3
    finally:
        capture.shutdown()
