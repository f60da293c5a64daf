"""The client's call path on fake channels: the first attempt needs no attempt plan;
a failure builds one; the memo learns only from calls that went somewhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from test_transport_rules import FakeRpcError

from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import CallFailed
from shardroute.model import LoadReport, Shard
from shardroute.transport import ChannelPool

U = grpc.StatusCode.UNAVAILABLE


def _same(data: bytes) -> bytes:
    return data


class EchoStub:
    def __init__(self, channel: Any) -> None:
        self.Echo = channel.unary_unary(
            "/t.Echo/Echo", request_serializer=_same, response_deserializer=_same
        )
        self.Stream = channel.unary_stream(
            "/t.Echo/Stream", request_serializer=_same, response_deserializer=_same
        )


class _DoneCall:
    def trailing_metadata(self) -> Any:
        return ()


class FakeChannel:
    """Answers with the shard's address, or raises what ``failing`` says for it."""

    def __init__(self, address: str, failing: dict[str, grpc.RpcError], seen: list[Any]) -> None:
        self.address, self.failing, self.seen = address, failing, seen

    def unary_unary(self, path: str, **_: Any) -> Any:
        def call(request: bytes, timeout: float, metadata: Any) -> bytes:
            self.seen.append((self.address, dict(metadata)))
            if self.address in self.failing:
                raise self.failing[self.address]
            return self.address.encode()

        class MultiCallable:  # grpc's: called, or with_call for (response, call)
            __call__ = staticmethod(call)

            def with_call(self, request: bytes, timeout: float, metadata: Any) -> Any:
                return call(request, timeout, metadata), _DoneCall()

        return MultiCallable()

    def unary_stream(self, path: str, **_: Any) -> Callable[..., Any]:
        def call(request: bytes, timeout: float, metadata: Any) -> Any:
            self.seen.append((self.address, dict(metadata)))
            failing = self.failing.get(self.address)

            class Call:
                def __iter__(self) -> Iterator[bytes]:
                    if failing is not None:
                        raise failing
                    yield b"a"
                    yield b"b"

                def cancel(self) -> None:
                    pass

                def trailing_metadata(self) -> Any:
                    return ()

            return Call()

        return call


@pytest.fixture
def setup() -> Iterator[tuple[ShardClient, InMemoryTopologySource, dict[str, Any], list[Any]]]:
    source = InMemoryTopologySource("t", [Shard(f"s{i}", f"s{i}:1") for i in range(3)])
    client = ShardClient(source, timeout=5)
    failing: dict[str, Any] = {}
    seen: list[Any] = []
    client._core.channels = ChannelPool(
        lambda shard: FakeChannel(shard.address, failing, seen), lambda channel: None
    )
    yield client, source, failing, seen
    client.close()


def test_home_call_sends_one_entry_and_writes_no_pin(setup: Any) -> None:
    client, _, _, seen = setup
    echo = client.stub(EchoStub).Echo
    home = client.route("k").shard
    assert echo(b"x", session_key="k") == home.address.encode()
    assert seen[-1] == (home.address, {"x-shardroute-session": "k"})
    assert len(client.router.memo) == 0
    assert client.stats.snapshot() == {"calls": 1, "affinity": 1}
    assert client.inflight.count(home.id) == 0


def test_a_spill_pins_the_session_once_the_call_went_there(setup: Any) -> None:
    client, source, _, seen = setup
    echo = client.stub(EchoStub).Echo
    home = client.route("k").shard
    source.put_load(home.id, LoadReport(inflight=1000))
    decision = client.route("k")
    assert decision.reason.value == "spill" and client.router.pinned("k") is None
    assert echo(b"x", session_key="k") == decision.shard.address.encode()
    assert seen[-1][1]["x-shardroute-reason"] == "spill"
    assert client.router.pinned("k") == decision.shard.id


def test_a_failed_first_attempt_fails_over_and_pins(setup: Any) -> None:
    client, _, failing, seen = setup
    echo = client.stub(EchoStub).Echo
    decision = client.route("k")
    failing[decision.shard.address] = FakeRpcError(U, "failed to connect to all addresses")
    reply = echo(b"x", session_key="k")
    fallback = decision.fallbacks[0]
    assert reply == fallback.address.encode()
    assert seen[-1][1]["x-shardroute-reason"] == "failover"
    assert client.router.pinned("k") == fallback.id
    assert client.stats.snapshot()["failovers"] == 1
    assert decision.shard.id in client.outlier.ejected()
    assert all(client.inflight.count(s.id) == 0 for s in decision.candidates)


def test_a_failed_call_pins_nothing(setup: Any) -> None:
    client, source, failing, _ = setup
    echo = client.stub(EchoStub).Echo
    home = client.route("k").shard
    source.put_load(home.id, LoadReport(inflight=1000))
    spill = client.route("k").shard
    failing[spill.address] = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no")
    with pytest.raises(CallFailed):
        echo(b"x", session_key="k")
    assert client.router.pinned("k") is None
    assert client.stats.snapshot()["errors"] == 1


def test_stream_fails_over_before_its_first_message(setup: Any) -> None:
    client, _, failing, _ = setup
    stream = client.stub(EchoStub).Stream
    decision = client.route("k")
    failing[decision.shard.address] = FakeRpcError(U, "failed to connect to all addresses")
    assert list(stream(b"x", session_key="k")) == [b"a", b"b"]
    assert client.router.pinned("k") == decision.fallbacks[0].id
