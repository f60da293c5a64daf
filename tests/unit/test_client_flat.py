"""The flat unary path (``AsyncCallLoops._bind_unary`` and its generated sync twin): one
closure routes, makes the first attempt, counts it in flight and does the success
bookkeeping inline; anything else falls back to the general code. Each scenario runs
twice, on the flat path and on the general one (``ClientCore.bind`` and the loop, what a
free-threaded interpreter uses), for both clients, and must leave the same traces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from test_client_hot_path import EchoStub, _DoneCall
from test_transport_rules import FakeRpcError

from shardroute import _shell
from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import CallFailed
from shardroute.model import LoadReport, Shard
from shardroute.transport import ChannelPool, RetryPolicy

U = grpc.StatusCode.UNAVAILABLE


class _AioCall:
    """grpc.aio's unary call object: awaited for the response (or the error)."""

    def __init__(self, answer: Callable[[], bytes]) -> None:
        self._answer = answer

    def __await__(self) -> Any:
        return self._answer()
        yield  # a generator: awaiting it returns (or raises) at once

    async def trailing_metadata(self) -> Any:
        return ()


class Channel:
    """Answers with its address, or raises what ``failing`` holds for it; records each
    attempt with the caller's in-flight count to it and the in-flight excess then."""

    def __init__(self, shard: Shard, world: World) -> None:
        self.shard, self.world = shard, world

    def answer(self, metadata: Any) -> bytes:
        world, address = self.world, self.shard.address
        inflight = world.client.inflight
        md = {k: v for k, v in metadata if k != "x-shardroute-turn-id"}
        world.seen.append((address, md, inflight.count(self.shard.id), inflight.excess))
        world.turn_ids.append(dict(metadata).get("x-shardroute-turn-id"))
        failure = world.failing.get(address)
        if failure is not None:
            raise failure
        return address.encode()

    def unary_unary(self, path: str, **_: Any) -> Any:
        answer, aio = self.answer, self.world.aio

        class MultiCallable:  # grpc's: called, or with_call for (response, call)
            def __call__(self, request: bytes, timeout: float, metadata: Any) -> Any:
                if aio:
                    return _AioCall(lambda: answer(metadata))
                return answer(metadata)

            def with_call(self, request: bytes, timeout: float, metadata: Any) -> Any:
                return answer(metadata), _DoneCall()

        return MultiCallable()


class World:
    """One client (sync or asyncio) on fake channels to 3 shards, and what they saw."""

    def __init__(self, aio: bool, exactly_once: bool = False) -> None:
        self.aio = aio
        self.source = InMemoryTopologySource("t", [Shard(f"s{i}", f"s{i}:1") for i in range(3)])
        kind = AsyncShardClient if aio else ShardClient
        self.client: Any = kind(
            self.source, timeout=5, retry=RetryPolicy(exactly_once=exactly_once)
        )
        self.failing: dict[str, Any] = {}
        self.seen: list[Any] = []
        self.turn_ids: list[str | None] = []
        self.client._core.channels = ChannelPool(
            lambda shard: Channel(shard, self), lambda channel: None
        )
        self.echo = self.client.stub(EchoStub).Echo

    def call(self, key: str, **kwargs: Any) -> Any:
        """The call's reply, or the class name of what it raised."""
        try:
            if self.aio:
                return asyncio.run(self.echo(b"x", session_key=key, **kwargs))
            return self.echo(b"x", session_key=key, **kwargs)
        except (CallFailed, ValueError) as error:
            return type(error).__name__


def scenario(world: World) -> list[Any]:
    """Home calls, a spill and its pin, a failed first attempt (failover, ejection), a
    call with options, an error for the caller, an error that is not gRPC's."""
    client, out = world.client, []
    home = client.route("k1").shard
    out.append(world.call("k1"))
    world.source.put_load(home.id, LoadReport(inflight=1))  # the excess has a threshold
    out.append(world.call("k1"))
    busy = client.route("k2").shard
    world.source.put_load(busy.id, LoadReport(inflight=1000))
    out += [world.call("k2"), world.call("k2")]  # spill, then memo
    down = client.route("k3").shard
    world.failing[down.address] = FakeRpcError(U, "failed to connect to all addresses")
    out += [world.call("k3"), world.call("k3")]
    world.failing.clear()
    out.append(world.call("k4", priority="batch", idempotent=True, metadata=(("a", "b"),)))
    refusing = client.route("k5").shard
    world.failing[refusing.address] = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no")
    out.append(world.call("k5"))
    world.failing[refusing.address] = ValueError("not gRPC's")
    out.append(world.call("k5"))
    world.failing.clear()
    out += [
        world.seen,
        client.stats.snapshot(),
        {k: client.router.pinned(k) for k in ("k1", "k2", "k3", "k4", "k5")},
        sorted(client.outlier.ejected()),
        {s: client.inflight.count(s) for s in ("s0", "s1", "s2")},
        client.inflight.excess,
    ]
    return out


@pytest.fixture(params=[False, True], ids=["sync", "asyncio"])
def aio(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_a_unary_method_is_the_flat_closure(aio: bool) -> None:
    world = World(aio)
    assert world.echo.__code__.co_filename.endswith(("_async_calls.py", "_sync_calls.py"))
    assert world.echo.__name__ == "Echo"
    stream = world.client.stub(EchoStub).Stream  # streams: ClientCore.bind and the loop
    assert stream.__code__.co_filename.endswith("_core.py")


def test_flat_and_general_paths_leave_the_same_traces(
    aio: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat = scenario(World(aio))
    monkeypatch.setattr(_shell, "LOCK_FREE", False)  # what a free-threaded build does
    general_world = World(aio)
    assert general_world.echo.__code__.co_filename.endswith("_core.py")
    general = scenario(general_world)
    assert flat == general
    replies, seen, stats = flat[:9], flat[9], flat[10]
    assert replies[-2:] == ["CallFailed", "ValueError"]
    assert stats["failovers"] == 1 and stats["memo"] >= 1 and stats["spill"] == 1
    assert all(count == 1 for _, _, count, _ in seen)  # each attempt counted while it ran
    assert flat[-2] == {"s0": 0, "s1": 0, "s2": 0} and flat[-1] == 0  # ... and after


def test_a_failed_first_attempt_is_retried_by_the_general_loop_elsewhere(aio: bool) -> None:
    world = World(aio, exactly_once=True)
    decision = world.client.route("k")
    world.failing[decision.shard.address] = FakeRpcError(U, "failed to connect to all addresses")
    assert world.call("k") == decision.fallbacks[0].address.encode()
    (first, _, _, _), (second, md, _, _) = world.seen
    assert (first, second) == (decision.shard.address, decision.fallbacks[0].address)
    assert md["x-shardroute-reason"] == "failover"
    assert world.turn_ids[0] is not None and world.turn_ids[0] == world.turn_ids[1]
    assert world.client.router.pinned("k") == decision.fallbacks[0].id
    assert world.client.stats.snapshot()["failovers"] == 1
    assert all(world.client.inflight.count(s.id) == 0 for s in decision.candidates)


def test_the_inline_in_flight_count_keeps_the_excess_of_in_flight_begin_and_end(
    aio: bool,
) -> None:
    world = World(aio)
    home = world.client.route("k").shard
    world.source.put_load(home.id, LoadReport(inflight=0))  # threshold 0: each call exceeds
    world.client.inflight.begin(home.id)  # a call of another thread, running meanwhile
    assert world.client.inflight.excess == 1
    world.call("k")
    assert world.seen[-1][2:] == (2, 2)  # counted in flight and as excess while it ran
    assert world.client.inflight.count(home.id) == 1 and world.client.inflight.excess == 1
    world.client.inflight.end(home.id)
    assert world.client.inflight.excess == 0
