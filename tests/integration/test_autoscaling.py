"""Issue 12: the autoscaler on real etcd and real chat shard processes.

Load rises → the advice goes up → the actuator starts a shard → every conversation keeps
its history. Load falls → the advice goes down → a shard is drained (SIGTERM: its sessions
move), not killed → no turn is lost.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from chat_calls import history, turn_retried

from shardroute.client import ShardClient
from shardroute.errors import Overloaded, TopologyTimeout
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import Topology
from shardroute.routing import Router, RoutingPolicy
from shardroute.scaling import (
    Autoscaler,
    DesiredShardsGauge,
    ScalingAdvice,
    ScalingAdvisor,
    SpillPolicy,
    UtilisationPolicy,
)
from shardroute.testing.actuator import LocalActuator
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.otel import OtelCapture

SHARD_KWARGS = {"token_delay_s": 0.03, "capacity": 8}


@pytest.fixture
def cluster(etcd_endpoint: str) -> Iterator[ShardCluster]:
    with ShardCluster(etcd_endpoint, shard_kwargs=SHARD_KWARGS, lease_ttl_s=2) as c:
        yield c.start(2)


class Conversations:
    """Conversations taking turns from a few threads; every turn's number is checked. A
    turn that fails is retried as an application would (a take-over or move can refuse it:
    nothing executed); the final histories prove none was lost or applied twice."""

    def __init__(self, client: ShardClient, count: int) -> None:
        self.client = client
        self.turns = {f"conv-{i}": 0 for i in range(count)}
        self.errors: list[str] = []
        self.retries = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def one_round(self, keys: list[str]) -> None:
        for key in keys:
            expected = self.turns[key] + 1
            try:
                token, retries = turn_retried(self.client, key, f"p{expected}")
            except Exception as exc:
                self.errors.append(f"{key} turn {expected}: {exc!r}")
                continue
            self.retries += retries
            if token.turn != expected:
                self.errors.append(f"{key}: turn {token.turn}, expected {expected}")
            self.turns[key] = expected

    def start(self, threads: int) -> None:
        keys = sorted(self.turns)
        groups = [keys[i::threads] for i in range(threads)]
        self._stop.clear()

        def loop(group: list[str]) -> None:
            while not self._stop.is_set():
                self.one_round(group)

        self._threads = [threading.Thread(target=loop, args=(g,), daemon=True) for g in groups]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def step_until(
    scaler: Autoscaler, done: Callable[[ScalingAdvice], bool], timeout: float = 60.0
) -> ScalingAdvice:
    """Run autoscaler rounds, each on a fresher topology, until ``done`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        revision = scaler.source.current().revision
        advice = scaler.step()
        if done(advice):
            return advice
        if time.monotonic() > deadline:
            raise AssertionError(f"advice never satisfied the test: {advice.reasons}")
        with contextlib.suppress(TopologyTimeout):  # a quiet fleet: advise again anyway
            scaler.source.wait_for(lambda t, seen=revision: t.revision > seen, timeout=5.0)


def all_idle(topology: Topology) -> bool:
    active = [s.id for s in topology.shards.values() if s.available]
    return all((r := topology.loads.get(i)) is not None and r.inflight == 0 for i in active)


def test_load_up_adds_a_shard_load_down_drains_one_and_no_turn_is_lost(
    cluster: ShardCluster, etcd_endpoint: str
) -> None:
    advisor = ScalingAdvisor(
        [UtilisationPolicy(target=0.05)], min_shards=2, max_shards=3, scale_down_window_s=0
    )
    actuator = LocalActuator(cluster, shard_kwargs=SHARD_KWARGS)
    scaler = Autoscaler(advisor, actuator, cluster.source, interval_s=0.5)
    with ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client:
        talk = Conversations(client, 24)
        talk.one_round(sorted(talk.turns))  # every conversation exists: 2 shards hold them
        before = set(cluster.shard_ids)

        talk.start(threads=6)
        try:
            advice = step_until(scaler, lambda a: a.direction == "up")
            assert advice.desired_shards == 3 and actuator.added
            assert any("utilisation" in r for r in advice.reasons)
            new = actuator.added[0]
            cluster.wait_for(lambda t: new in t.shards and t.shards[new].available)
            # Traffic goes on over three shards until the new one has served turns.
            cluster.wait_for(
                lambda t: (r := t.loads.get(new)) is not None and r.sessions > 0, timeout=60
            )
        finally:
            talk.stop()
        assert talk.errors == []

        cluster.wait_for(all_idle, timeout=60)
        advice = step_until(scaler, lambda a: a.direction == "down")
        assert advice.desired_shards == 2 and len(actuator.drained) == 1
        drained = actuator.drained[0]
        assert cluster.wait_exit(drained, timeout=30) == 0  # a graceful drain, exit code 0
        cluster.wait_for(lambda t: drained not in t.shards)
        assert set(cluster.shard_ids) | {drained} == before | {new}
        assert scaler.scale_ups == 1 and scaler.scale_downs == 1

        # Every conversation goes on where it was: no turn lost, histories whole.
        talk.one_round(sorted(talk.turns))
        assert talk.errors == []
        for key, turns in talk.turns.items():
            assert history(client, key) == [f"p{n}" for n in range(1, turns + 1)]


def test_low_priority_traffic_at_its_ceiling_shows_in_the_router_signals(
    cluster: ShardCluster, etcd_endpoint: str, otel_capture: OtelCapture
) -> None:
    """Real etcd, two real chat shards of capacity 8, a batch ceiling of 1/8 (one call in
    flight fills a shard for batch): batch calls spill past a home at its ceiling, then are
    refused as Overloaded when both are; standard calls still go home. The client's
    CallStats count both, the sampler's RouterSignals turn them into the share of decisions
    at a priority ceiling, and the spill policy and the gauge show it."""
    ceilings = {"batch": 0.125, "standard": 0.9, "critical": 1.0}
    router = Router(RoutingPolicy(priority_ceilings=ceilings))
    gauge = DesiredShardsGauge(otel_capture.meter_provider.get_meter("shardroute"))
    advisor = ScalingAdvisor([SpillPolicy(0.25, intervals=1, min_calls=1)], max_shards=3)
    with ShardClient.connect(etcd_endpoint, "chat", timeout=30, router=router) as client:
        client.source.wait_for(lambda t: len(t.shards) == 2)
        scaler = Autoscaler(
            advisor, None, cluster.source, router_stats=client.stats.snapshot, gauge=gauge
        )
        scaler.step()  # the first sample: the interval starts here
        homes: dict[str, list[str]] = {}
        for n in range(200):
            homes.setdefault(client.route(f"conv-{n}").home.id, []).append(f"conv-{n}")
        (a, on_a), (b, on_b) = sorted(homes.items())
        chat = client.stub(chat_pb2_grpc.ChatStub)

        def hold(key: str) -> Iterator[chat_pb2.Token]:
            """A turn whose stream stays open (in flight) until closed."""
            request = chat_pb2.GenerateRequest(prompt="long", max_tokens=50)
            stream: Iterator[chat_pb2.Token] = chat.Generate(request, session_key=key)
            next(stream)
            return stream

        def turn(key: str, priority: str = "standard") -> chat_pb2.Token:
            request = chat_pb2.GenerateRequest(prompt="p1", max_tokens=3)
            return list(chat.Generate(request, session_key=key, priority=priority))[-1]

        held = [hold(on_a[0])]
        try:
            assert client.inflight.count(a) == 1
            assert turn(on_a[1], "batch").shard_id == b  # home at batch's ceiling: spilled
            assert turn(on_a[2]).shard_id == a  # standard: home, no mark
            held.append(hold(on_b[0]))
            with pytest.raises(Overloaded, match="'batch'"):
                turn(on_a[3], "batch")
            stats = client.stats.snapshot()
            assert stats["at_ceiling"] == 1 and stats["overloaded"] == 1
            assert stats["spill"] == 1 and stats["calls"] == 2
            advice = scaler.step()
        finally:
            for stream in held:
                stream.close()
    latest = scaler.history.latest
    assert latest is not None and latest.router is not None
    signals = latest.router
    assert signals.decisions == 3 and signals.overloaded == 1
    assert signals.ceiling_share == pytest.approx(2 / 3)  # 1 at ceiling + 1 refused, of 3
    assert advice.desired_shards == 3  # spilled or refused: 2 of 3 decisions
    assert any("67% of decisions at a priority ceiling" in r for r in advice.reasons)
    assert otel_capture.value("shardroute_router_ceiling_share") == pytest.approx(2 / 3)
