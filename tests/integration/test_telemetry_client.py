"""Client telemetry against real gRPC servers on loopback, with the real OpenTelemetry
SDK (explicit providers: in-memory span exporter and metric reader)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from echo_service import EchoServer, EchoStub
from opentelemetry.trace import SpanKind, StatusCode

from shardroute import metadata
from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import CallFailed, Overloaded
from shardroute.model import LoadReport
from shardroute.telemetry import names, sdk_configured, session_hash
from shardroute.testing.otel import OtelCapture


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started = [EchoServer(f"s{i}") for i in range(3)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def source(servers: list[EchoServer]) -> InMemoryTopologySource:
    return InMemoryTopologySource("echo", [s.shard for s in servers])


@pytest.fixture
def client(source: InMemoryTopologySource, otel_capture: OtelCapture) -> Iterator[ShardClient]:
    with ShardClient(source, timeout=10, telemetry=otel_capture.telemetry()) as c:
        yield c


def by_id(servers: list[EchoServer], shard_id: str) -> EchoServer:
    return next(s for s in servers if s.shard_id == shard_id)


def test_a_routed_call_is_a_client_span_with_rpc_and_routing_attributes(
    client: ShardClient, otel_capture: OtelCapture, servers: list[EchoServer]
) -> None:
    home = client.route("conv-1").shard
    assert client.stub(EchoStub).Echo(b"x", session_key="conv-1") == f"{home.id}:x".encode()
    (span,) = otel_capture.spans("test.Echo/Echo")
    attributes = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert attributes[names.RPC_SYSTEM] == "grpc"
    assert attributes[names.RPC_SERVICE] == "test.Echo"
    assert attributes[names.RPC_METHOD] == "Echo"
    assert f"{attributes[names.SERVER_ADDRESS]}:{attributes[names.SERVER_PORT]}" == home.address
    assert attributes[names.RPC_GRPC_STATUS_CODE] == 0
    assert attributes[names.SHARD] == home.id and attributes[names.REASON] == "affinity"
    assert attributes[names.PRIORITY] == "standard" and attributes[names.ATTEMPTS] == 1
    assert names.HOME not in attributes  # the shard is the home
    # the session: hashed, never the raw key
    assert attributes[names.SESSION_HASH] == session_hash("conv-1")
    assert names.SESSION_KEY not in attributes
    assert "conv-1" not in str(attributes)
    # W3C trace context went to the shard with the call
    seen = by_id(servers, home.id).seen_metadata[-1]
    trace_id = format(span.context.trace_id, "032x")
    assert seen["traceparent"].split("-")[1] == trace_id
    assert seen[metadata.SESSION_KEY] == "conv-1"
    # and the call is counted
    assert otel_capture.value(names.DECISIONS, {names.REASON: "affinity"}) == 1
    (point,) = otel_capture.points(names.CLIENT_DURATION)
    assert point.count == 1 and 0 < point.sum < 10
    assert tuple(point.explicit_bounds) == names.DURATION_BUCKETS_S  # the bucket advice


def test_the_raw_session_key_only_on_opt_in(
    source: InMemoryTopologySource, otel_capture: OtelCapture
) -> None:
    with ShardClient(source, telemetry=otel_capture.telemetry(record_session_key=True)) as client:
        client.stub(EchoStub).Echo(b"x", session_key="conv-2")
    (span,) = otel_capture.spans()
    assert span.attributes is not None
    assert span.attributes[names.SESSION_KEY] == "conv-2"
    assert span.attributes[names.SESSION_HASH] == session_hash("conv-2")


def test_a_failover_shows_both_attempts(
    client: ShardClient,
    otel_capture: OtelCapture,
    servers: list[EchoServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=names.LOG_CLIENT)
    decision = client.route("conv-3")
    home, fallback = decision.shard, decision.fallbacks[0]
    by_id(servers, home.id).stop()
    assert client.stub(EchoStub).Echo(b"x", session_key="conv-3") == f"{fallback.id}:x".encode()
    (span,) = otel_capture.spans()
    attributes = dict(span.attributes or {})
    assert attributes[names.SHARD] == fallback.id and attributes[names.HOME] == home.id
    assert attributes[names.REASON] == "failover" and attributes[names.ATTEMPTS] == 2
    assert f"{attributes[names.SERVER_ADDRESS]}:{attributes[names.SERVER_PORT]}" == (
        fallback.address
    )
    (event,) = span.events
    assert event.name == names.EVENT_ATTEMPT_FAILED
    assert dict(event.attributes or {}) == {
        names.SHARD: home.id,
        names.FAILURE: "not_sent",
        names.ATTEMPTS: 1,
    }
    # the killed shard: ejected, failed over, and the second call avoids it
    client.stub(EchoStub).Echo(b"x", session_key="conv-3")
    assert otel_capture.value(names.EJECTIONS, {names.SHARD: home.id, names.CAUSE: "not_sent"}) == 1
    assert otel_capture.value(names.FAILOVERS, {names.SHARD: home.id}) == 1
    assert otel_capture.value(names.EJECTED, {names.SERVICE: "echo"}) == 1
    assert otel_capture.value(names.DECISIONS, {names.REASON: "failover"}) == 1
    assert otel_capture.value(names.CHANNELS) == 2  # made on first use: home and fallback
    ejection = next(r for r in caplog.records if r.name == names.LOG_CLIENT)
    assert ejection.levelname == "WARNING"
    assert (ejection.shardroute_event, ejection.shard, ejection.cause) == (  # type: ignore[attr-defined]
        "ejection",
        home.id,
        "not_sent",
    )
    failover = next(r for r in caplog.records if getattr(r, "shardroute_event", "") == "failover")
    assert (failover.shard, failover.target) == (home.id, fallback.id)  # type: ignore[attr-defined]
    assert failover.session_hash == session_hash("conv-3")  # type: ignore[attr-defined]


def test_a_spill_is_counted_and_named(
    client: ShardClient, otel_capture: OtelCapture, source: InMemoryTopologySource
) -> None:
    home = client.route("conv-4").shard
    source.put_load(home.id, LoadReport(inflight=1000))  # at capacity
    client.stub(EchoStub).Echo(b"x", session_key="conv-4", priority="batch")
    (span,) = otel_capture.spans()
    assert span.attributes is not None
    assert span.attributes[names.REASON] == "spill"
    assert span.attributes[names.PRIORITY] == "batch"
    assert span.attributes[names.SHARD] != home.id
    assert otel_capture.value(names.SPILLS, {names.PRIORITY: "batch"}) == 1
    assert otel_capture.value(names.DECISIONS, {names.REASON: "spill"}) == 1


def test_a_redirect_is_followed_and_shown(
    client: ShardClient, otel_capture: OtelCapture, servers: list[EchoServer]
) -> None:
    home = by_id(servers, client.route("conv-5").shard.id)
    owner = next(s for s in servers if s is not home)
    home.redirect_to = owner.shard_id
    assert client.stub(EchoStub).Echo(b"x", session_key="conv-5") == f"{owner.shard_id}:x".encode()
    (span,) = otel_capture.spans()
    assert span.attributes is not None
    assert span.attributes[names.REASON] == "redirect"
    assert span.attributes[names.SHARD] == owner.shard_id
    assert [dict(e.attributes or {})[names.FAILURE] for e in span.events] == ["redirected"]
    assert otel_capture.value(names.REDIRECTS, {names.SHARD: home.shard_id}) == 1


def test_a_failed_call_sets_the_span_status(client: ShardClient, otel_capture: OtelCapture) -> None:
    with pytest.raises(CallFailed):
        client.stub(EchoStub).Fail(b"x", session_key="conv-6")
    (span,) = otel_capture.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes[names.RPC_GRPC_STATUS_CODE] == 3  # INVALID_ARGUMENT
    assert otel_capture.value(names.CLIENT_DURATION, {names.RPC_GRPC_STATUS_CODE: 3}) == 1


def test_overloaded_is_counted_by_priority(
    client: ShardClient, otel_capture: OtelCapture, source: InMemoryTopologySource
) -> None:
    for shard_id in source.current().shards:
        source.put_load(shard_id, LoadReport(inflight=1000))
    with pytest.raises(Overloaded):
        client.stub(EchoStub).Echo(b"x", session_key="conv-7", priority="batch")
    assert otel_capture.value(names.OVERLOADED, {names.PRIORITY: "batch"}) == 1


def test_a_stream_is_one_span(client: ShardClient, otel_capture: OtelCapture) -> None:
    assert len(list(client.stub(EchoStub).Count(b"3", session_key="conv-8"))) == 3
    (span,) = otel_capture.spans("test.Echo/Count")
    assert span.attributes is not None and span.attributes[names.RPC_GRPC_STATUS_CODE] == 0


def test_the_asyncio_client_records_the_same(
    source: InMemoryTopologySource, otel_capture: OtelCapture, servers: list[EchoServer]
) -> None:
    async def main() -> None:
        async with AsyncShardClient(source, telemetry=otel_capture.telemetry()) as client:
            echo = client.stub(EchoStub)
            await echo.Echo(b"x", session_key="conv-9")
            assert [m async for m in echo.Count(b"2", session_key="conv-9")]

    asyncio.run(main())
    unary, stream = otel_capture.spans()
    assert (unary.name, stream.name) == ("test.Echo/Echo", "test.Echo/Count")
    seen = [s.seen_metadata[-1] for s in servers if s.seen_metadata]
    assert seen and all("traceparent" in m for m in seen)


def test_without_an_sdk_nothing_is_recorded_and_calls_work(
    client: ShardClient, source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    assert not sdk_configured()  # these tests never set the global providers
    with ShardClient(source) as plain:
        assert not plain._core.telemetry.active()
        home = plain.route("conv-10").shard.id
        assert plain.stub(EchoStub).Echo(b"x", session_key="conv-10") == f"{home}:x".encode()
        assert list(plain.stub(EchoStub).Count(b"2", session_key="conv-10"))
    assert "traceparent" not in by_id(servers, home).seen_metadata[-1]
