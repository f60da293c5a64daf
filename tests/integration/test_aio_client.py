"""AsyncShardClient behaves like ShardClient: affinity, failover, streams, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from echo_service import EchoServer, EchoStub

from shardroute.aio import AsyncShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import CallFailed, NoShardAvailable, OutcomeUnknown, UnknownMethod
from shardroute.model import Shard
from shardroute.testing.etcd import free_port


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started = [EchoServer(f"s{i}") for i in range(3)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def source(servers: list[EchoServer]) -> InMemoryTopologySource:
    return InMemoryTopologySource("echo", [s.shard for s in servers])


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_affinity_streams_and_channel_close(
    source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    async def main() -> None:
        async with AsyncShardClient(source) as client:
            echo = client.stub(EchoStub)
            for n in range(20):
                session = f"conv-{n}"
                home = client.route(session).shard.id
                replies = [await echo.Echo(b"t", session_key=session) for _ in range(3)]
                assert replies == [f"{home}:t".encode()] * 3
            tokens = [m async for m in echo.Count(b"3", session_key="conv-1")]
            home = client.route("conv-1").shard.id
            assert tokens == [f"{home}:{i}".encode() for i in range(3)]
            assert len(client._core.channels) == 3
            source.remove_shard("s2")  # from this thread; channel closed on the loop
            assert len(client._core.channels) == 2

    run(main())


def test_dead_shard_fails_over_and_errors_are_the_same(
    source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    source.put_shard(Shard("dead", f"127.0.0.1:{free_port()}", capacity=1000))

    async def main() -> None:
        async with AsyncShardClient(source, timeout=10) as client:
            echo = client.stub(EchoStub)
            sessions = [f"c{n}" for n in range(100) if client.route(f"c{n}").shard.id == "dead"]
            assert sessions
            for session in sessions:
                assert not (await echo.Echo(b"x", session_key=session)).startswith(b"dead")
            assert "dead" in client.outlier.ejected()
            with pytest.raises(CallFailed):
                await echo.Fail(b"x", session_key="c1")
            with pytest.raises(UnknownMethod):
                await echo.Missing(b"x", session_key="c1")

    run(main())


def test_stream_broken_after_first_message(
    source: InMemoryTopologySource, servers: list[EchoServer]
) -> None:
    async def main() -> None:
        async with AsyncShardClient(source) as client:
            home = next(s for s in servers if s.shard_id == client.route("cs").shard.id)
            stream = client.stub(EchoStub).Count(b"1000", session_key="cs", idempotent=True)
            first = await stream.__anext__()
            assert first == f"{home.shard_id}:0".encode()
            home.server.stop(0)
            with pytest.raises(OutcomeUnknown):
                async for _ in stream:
                    pass
            assert sum(s.calls for s in servers) == 1

    run(main())


def test_empty_topology() -> None:
    async def main() -> None:
        async with AsyncShardClient(InMemoryTopologySource("echo")) as client:
            with pytest.raises(NoShardAvailable):
                await client.stub(EchoStub).Echo(b"x", session_key="c")

    run(main())


def test_async_redirect_followed(source: InMemoryTopologySource, servers: list[EchoServer]) -> None:
    async def main() -> None:
        async with AsyncShardClient(source) as client:
            home = next(s for s in servers if s.shard_id == client.route("moved").shard.id)
            owner = next(s for s in servers if s is not home)
            home.redirect_to = owner.shard_id
            reply = await client.stub(EchoStub).Echo(b"x", session_key="moved")
            assert reply == f"{owner.shard_id}:x".encode()
            assert client.router.pinned("moved") == owner.shard_id

    run(main())
