"""ShardClient against real gRPC servers on loopback: affinity, spill, failover, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from echo_service import EchoServer, EchoStub

from shardroute import metadata
from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import (
    CallFailed,
    DeadlineExceeded,
    NoShardAvailable,
    OutcomeUnknown,
    PayloadTooLarge,
    ShardUnavailable,
    UnknownMethod,
)
from shardroute.model import LoadReport, Shard, ShardState
from shardroute.testing.etcd import free_port
from shardroute.transport import OutlierDetector, RetryPolicy


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started = [EchoServer(f"s{i}", zone="z1" if i < 2 else "z2") for i in range(4)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def source(servers: list[EchoServer]) -> InMemoryTopologySource:
    return InMemoryTopologySource("echo", [s.shard for s in servers])


@pytest.fixture
def client(source: InMemoryTopologySource) -> Iterator[ShardClient]:
    with ShardClient(source, timeout=10) as c:
        yield c


def owner_of(reply: bytes) -> str:
    return reply.split(b":", 1)[0].decode()


def test_affinity_holds_across_turns_and_sessions_spread(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    echo = client.stub(EchoStub)
    for n in range(40):
        session = f"conv-{n}"
        homes = {owner_of(echo.Echo(b"turn", session_key=session)) for _ in range(5)}
        assert len(homes) == 1
        assert homes == {client.route(session).shard.id}
    assert all(s.calls > 0 for s in servers)  # 40 sessions reach all 4 shards


def test_metadata_carries_session_shard_reason_priority(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    echo = client.stub(EchoStub)
    reply = echo.Echo(b"x", session_key="conv-1", priority="critical", metadata=(("k", "v"),))
    server = next(s for s in servers if s.shard_id == owner_of(reply))
    seen = server.seen_metadata[-1]
    assert seen[metadata.SESSION_KEY] == "conv-1"
    assert metadata.SHARD_ID not in seen
    assert metadata.REASON not in seen  # affinity, the common case, is implied
    assert seen[metadata.PRIORITY] == "critical" and seen["k"] == "v"
    echo.Echo(b"x", session_key="conv-1")
    assert metadata.PRIORITY not in server.seen_metadata[-1]  # standard is implied


def test_saturated_shard_spills(client: ShardClient, source: InMemoryTopologySource) -> None:
    echo = client.stub(EchoStub)
    home = client.route("conv-hot").shard.id
    source.put_load(home, LoadReport(inflight=1000))  # at capacity
    decision = client.route("conv-hot")
    assert decision.shard.id != home and decision.reason.value in ("spill", "zone_fallback")
    assert owner_of(echo.Echo(b"x", session_key="conv-hot")) == decision.shard.id


def test_draining_shard_gets_no_new_sessions(
    client: ShardClient, source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    echo = client.stub(EchoStub)
    draining = servers[0].shard
    source.put_shard(Shard(draining.id, draining.address, zone="z1", state=ShardState.DRAINING))
    before = servers[0].calls
    for n in range(60):
        assert owner_of(echo.Echo(b"x", session_key=f"new-{n}")) != draining.id
    assert servers[0].calls == before


def test_dead_shard_fails_over_without_errors_and_is_ejected(
    client: ShardClient, source: InMemoryTopologySource
) -> None:
    dead = Shard("dead", f"127.0.0.1:{free_port()}", zone="z1", capacity=1000)
    source.put_shard(dead)
    echo = client.stub(EchoStub)
    sessions = [f"conv-{n}" for n in range(200) if client.route(f"conv-{n}").shard.id == "dead"]
    assert sessions, "some sessions must have the dead shard as home"
    for session in sessions:
        assert (
            owner_of(echo.Echo(b"x", session_key=session)) != "dead"
        )  # not idempotent: never sent
    assert "dead" in client.outlier.ejected()
    assert client.route(sessions[0]).shard.id != "dead"
    stats = client.stats.snapshot()
    assert stats["calls"] == len(sessions) and "errors" not in stats
    assert stats["failovers"] == 1  # the first call; then the dead shard was ejected


def test_every_shard_unreachable_is_shard_unavailable() -> None:
    source = InMemoryTopologySource(
        "echo", [Shard(f"d{i}", f"127.0.0.1:{free_port()}") for i in range(3)]
    )
    with ShardClient(source, timeout=5, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(ShardUnavailable) as info:
            client.stub(EchoStub).Echo(b"x", session_key="conv")
        assert len(info.value.tried) == 3 and info.value.retry_safe
        assert isinstance(info.value.__cause__, grpc.RpcError)


def test_empty_topology_is_no_shard_available() -> None:
    with ShardClient(InMemoryTopologySource("echo")) as client, pytest.raises(NoShardAvailable):
        client.stub(EchoStub).Echo(b"x", session_key="conv")


def _kill_during_block(server: EchoServer) -> threading.Thread:
    def kill() -> None:
        server.block_entered.wait(10)
        server.server.stop(0)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_shard_dying_mid_call_retries_idempotent_call_elsewhere(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    session = "conv-mid"
    home = next(s for s in servers if s.shard_id == client.route(session).shard.id)
    killer = _kill_during_block(home)
    for s in servers:
        if s is not home:
            s.release.set()
    reply = client.stub(EchoStub).Block(b"x", session_key=session, idempotent=True)
    killer.join()
    assert reply.decode() != home.shard_id and home.calls == 1


def test_shard_dying_mid_call_is_outcome_unknown_when_not_idempotent(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    session = "conv-mid2"
    home = next(s for s in servers if s.shard_id == client.route(session).shard.id)
    killer = _kill_during_block(home)
    with pytest.raises(OutcomeUnknown) as info:
        client.stub(EchoStub).Block(b"x", session_key=session)
    killer.join()
    assert info.value.shard_id == home.shard_id
    assert sum(s.calls for s in servers) == 1  # nothing was retried


def test_stream_does_not_fail_over_after_first_message(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    session = "conv-stream"
    home = next(s for s in servers if s.shard_id == client.route(session).shard.id)
    stream = client.stub(EchoStub).Count(b"1000", session_key=session, idempotent=True)
    assert next(stream) == f"{home.shard_id}:0".encode()
    home.server.stop(0)
    with pytest.raises(OutcomeUnknown, match="stream had started"):
        list(stream)
    assert sum(s.calls for s in servers) == 1


def test_stream_happy_path_and_early_stop(client: ShardClient) -> None:
    count = client.stub(EchoStub).Count
    home = client.route("conv-s").shard.id
    assert list(count(b"4", session_key="conv-s")) == [f"{home}:{i}".encode() for i in range(4)]
    stream = count(b"4", session_key="conv-s")
    next(stream)
    stream.close()  # stops the call; in-flight accounting is released
    assert client.inflight.count(home) == 0


def test_application_error_is_call_failed(client: ShardClient) -> None:
    with pytest.raises(CallFailed) as info:
        client.stub(EchoStub).Fail(b"x", session_key="conv", idempotent=True)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details == "bad prompt"
    assert client.outlier.ejected() == frozenset()  # an answer is not an outlier
    assert client.stats.snapshot() == {"calls": 1, "errors": 1}


def test_unknown_methods(client: ShardClient) -> None:
    echo = client.stub(EchoStub)
    with pytest.raises(UnknownMethod, match="has no method 'Nope'"):
        _ = echo.Nope
    with pytest.raises(UnknownMethod, match=r"does not implement /test\.Echo/Missing"):
        echo.Missing(b"x", session_key="conv")
    with pytest.raises(UnknownMethod, match="stream-unary"):
        _ = echo.Upload


def test_oversized_request_is_payload_too_large_and_not_sent(
    source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    with ShardClient(source, max_message_bytes=1024) as client, pytest.raises(PayloadTooLarge):
        client.stub(EchoStub).Echo(b"x" * 2048, session_key="conv", idempotent=True)
    assert sum(s.calls for s in servers) == 0


def test_oversized_request_rejected_by_the_shard(client: ShardClient) -> None:
    # The client allows it (limit raised) but the shard keeps gRPC's 4 MiB default.
    source = client.source
    with (
        ShardClient(source, max_message_bytes=16 * 1024 * 1024) as big,
        pytest.raises(PayloadTooLarge, match="larger than max"),
    ):
        big.stub(EchoStub).Echo(b"x" * (5 * 1024 * 1024), session_key="conv")


def test_deadline_exceeded(client: ShardClient, servers: list[EchoServer]) -> None:
    with pytest.raises(DeadlineExceeded) as info:
        client.stub(EchoStub).Block(b"x", session_key="conv-d", timeout=0.2, idempotent=True)
    assert info.value.shard_id == client.route("conv-d").shard.id
    assert sum(s.calls for s in servers) == 1  # a deadline is not failed over


def test_channels_closed_when_shard_leaves(
    client: ShardClient, source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    echo = client.stub(EchoStub)
    for n in range(40):
        echo.Echo(b"x", session_key=f"c{n}")
    assert len(client._core.channels) == 4
    source.remove_shard("s3")
    assert len(client._core.channels) == 3


def test_bad_arguments(client: ShardClient) -> None:
    from shardroute.errors import ConfigError

    echo = client.stub(EchoStub)
    with pytest.raises(ConfigError):
        echo.Echo(b"x", session_key="")
    with pytest.raises(ConfigError):
        echo.Echo(b"x", session_key="c", timeout=0)
    with pytest.raises(ConfigError):
        ShardClient(client.source, timeout=-1)
    with pytest.raises(ConfigError):
        OutlierDetector(consecutive_failures=0)


def test_redirect_is_followed_once_and_remembered(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    echo = client.stub(EchoStub)
    session = "conv-moved"
    home = next(s for s in servers if s.shard_id == client.route(session).shard.id)
    owner = next(s for s in servers if s is not home)
    home.redirect_to = owner.shard_id
    # Not idempotent, still followed: a redirect means the call did not execute.
    assert owner_of(echo.Echo(b"x", session_key=session)) == owner.shard_id
    assert client.router.pinned(session) == owner.shard_id
    assert owner.seen_metadata[-1][metadata.REASON] == "redirect"
    calls_at_home = home.calls
    assert owner_of(echo.Echo(b"y", session_key=session)) == owner.shard_id
    assert home.calls == calls_at_home  # went straight to the new owner
    stats = client.stats.snapshot()
    assert stats["redirects"] == 1 and stats["redirect"] == 1 and "errors" not in stats


def test_redirect_loops_and_unknown_owners_are_clear_errors(
    client: ShardClient, servers: list[EchoServer]
) -> None:
    echo = client.stub(EchoStub)
    a = next(s for s in servers if s.shard_id == client.route("conv-loop").shard.id)
    b = next(s for s in servers if s is not a)
    a.redirect_to, b.redirect_to = b.shard_id, a.shard_id
    with pytest.raises(CallFailed, match="after a redirect already"):
        echo.Echo(b"x", session_key="conv-loop")
    a.redirect_to = "nowhere"
    client.router.forget("conv-loop")
    with pytest.raises(CallFailed, match="not in this client's topology"):
        echo.Echo(b"x", session_key="conv-loop")
