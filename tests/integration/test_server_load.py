"""Load accounting: the trailer on every response, queue depth, the etcd write budget.

Every test runs on both shells (``ShardServer`` and ``AsyncShardServer``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from shells import Shell

from shardroute import metadata
from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.server import AsyncShardServer, ShardServer
from shardroute.sessions import InMemorySessionStore
from shardroute.testing.waiting import wait_until

RELEASE = threading.Event()
"""Lets the Echo shards' Block and Stream calls go on (set by the test)."""


def _identity(data: bytes) -> bytes:
    return data


def _echo_handler(say: Any, fail: Any, block: Any, stream: Any) -> grpc.GenericRpcHandler:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn, _identity, _identity)
        for name, fn in (("Say", say), ("Fail", fail), ("Block", block))
    }
    handlers["Stream"] = grpc.unary_stream_rpc_method_handler(stream, _identity, _identity)
    return grpc.method_handlers_generic_handler("t.Echo", handlers)


class EchoShard(ShardServer):
    """A user service with its own trailing metadata, an error and a blocking call."""

    def add_services(self, server: grpc.Server) -> None:
        def say(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.set_trailing_metadata((("x-user", "mine"),))
            return request

        def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.set_trailing_metadata((("x-user", "failing"),))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
            raise AssertionError

        def block(request: bytes, context: grpc.ServicerContext) -> bytes:
            RELEASE.wait(10)
            return request

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            yield b"1"
            RELEASE.wait(10)
            yield b"2"

        server.add_generic_rpc_handlers((_echo_handler(say, fail, block, stream),))


class AsyncEchoShard(AsyncShardServer):
    """The asyncio twin of :class:`EchoShard` (same calls, same answers)."""

    def add_services(self, server: grpc.aio.Server) -> None:
        async def say(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            context.set_trailing_metadata((("x-user", "mine"),))
            return request

        async def fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            context.set_trailing_metadata((("x-user", "failing"),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
            raise AssertionError

        async def block(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await asyncio.to_thread(RELEASE.wait, 10)
            return request

        async def stream(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            yield b"1"
            await asyncio.to_thread(RELEASE.wait, 10)
            yield b"2"

        server.add_generic_rpc_handlers((_echo_handler(say, fail, block, stream),))


def echo_shell(kind: str, **kwargs: Any) -> Shell:
    """A started Echo shard (service "t", standalone) on the ``kind`` shell."""
    cls = EchoShard if kind == "sync" else AsyncEchoShard
    return Shell(kind, cls=cls, shard_id="e", service="t", etcd=None, **kwargs).start()


def _trailer(call: Any) -> dict[str, int]:
    text = metadata.get(call.trailing_metadata(), metadata.LOAD)
    assert text is not None, call.trailing_metadata()
    return metadata.parse_load(text)


def test_every_response_carries_the_load_and_keeps_the_users_trailers(kind: str) -> None:
    with echo_shell(kind, capacity=7) as shell:
        server = shell.server
        with grpc.insecure_channel(server.address) as channel:
            say = channel.unary_unary("/t.Echo/Say")
            reply, call = say.with_call(b"hi")
            assert reply == b"hi"
            assert metadata.get(call.trailing_metadata(), "x-user") == "mine"
            assert _trailer(call) == {"inflight": 0, "queue": 0, "capacity": 7}
            fail = channel.unary_unary("/t.Echo/Fail")
            try:
                fail(b"x")
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
                assert metadata.get(exc.trailing_metadata(), "x-user") == "failing"
                assert _trailer(exc)["capacity"] == 7
            else:
                raise AssertionError("Fail should fail")
        assert server.accounting.calls_total == 2


def test_streams_count_as_in_flight_until_they_finish(kind: str) -> None:
    RELEASE.clear()
    with echo_shell(kind) as shell, grpc.insecure_channel(shell.server.address) as channel:
        server = shell.server
        stream = channel.unary_stream("/t.Echo/Stream")(b"")
        assert next(stream) == b"1"
        assert server.accounting.inflight == 1  # the stream waits between its messages
        RELEASE.set()
        assert list(stream) == [b"2"]
        assert _trailer(stream)["inflight"] == 0
        wait_until(lambda: server.accounting.inflight == 0, 5.0, "no call in flight")
    p50, p95 = server.accounting.latency_ms()
    assert 0 < p50 <= p95


def test_chat_keeps_history_per_session_and_says_how_many_turns_it_holds(kind: str) -> None:
    shell = Shell(kind, shard_id="c", service="chat", etcd=None)
    server = shell.server
    with shell.start(), grpc.insecure_channel(server.address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        for turn in (1, 2, 3):
            tokens = list(stub.Generate(chat_pb2.GenerateRequest(session_key="a", prompt="hi")))
            assert {(t.turn, t.turns_held, t.shard_id) for t in tokens} == {(turn, turn, "c")}
            assert f"turn {turn}," in "".join(t.text for t in tokens)
        # The session key may come from the metadata instead of the field.
        other = list(
            stub.Generate(
                chat_pb2.GenerateRequest(prompt="yo"), metadata=[(metadata.SESSION_KEY, "b")]
            )
        )
        assert other[0].turn == 1
        reply, call = stub.History.with_call(chat_pb2.HistoryRequest(session_key="a"))
        assert reply.turns_held == 3 and reply.shard_id == "c"
        assert [t.prompt for t in reply.turns] == ["hi", "hi", "hi"]
        assert reply.turns[1].reply.startswith("[c] turn 2, 2 turns held")
        assert _trailer(call)["inflight"] == 0
        assert server.session_count() == 2
        try:
            stub.History(chat_pb2.HistoryRequest())
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError("a call without a session key should fail")


@pytest.mark.parametrize(("kind", "running", "queued"), [("sync", 2, 2), ("asyncio", 4, 0)])
def test_queue_depth_counts_calls_waiting_for_a_worker(
    kind: str, running: int, queued: int
) -> None:
    """Threads: calls beyond ``max_workers`` wait in the pool's queue. asyncio: handlers
    run on the event loop, there is no worker queue (docs/server.md): every call runs
    and the queue depth stays 0."""
    RELEASE.clear()
    with echo_shell(kind, max_workers=2) as shell:
        server = shell.server
        with (
            grpc.insecure_channel(server.address) as channel,
            futures.ThreadPoolExecutor(4) as pool,
        ):
            block = channel.unary_unary("/t.Echo/Block")
            calls = [pool.submit(block.with_call, b"x", timeout=10) for _ in range(4)]
            wait_until(lambda: server.accounting.inflight == running, 5.0, f"{running} in flight")
            wait_until(lambda: server.accounting.queue_depth == queued, 5.0, f"{queued} queued")
            assert server.load().queue_depth == queued
            RELEASE.set()
            for call in calls:
                call.result()
        assert server.accounting.queue_depth == 0


def test_load_report_writes_stay_within_the_budget_under_a_burst(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema, kind: str
) -> None:
    """A busy shard whose load changes all the time writes at most ~once a second."""
    with Shell(
        kind,
        shard_id="b",
        service="chat",
        etcd=etcd_endpoint,
        capacity=4,
        session_store=InMemorySessionStore(),  # only load reports write to etcd here
    ).start() as shell:
        server = shell.server
        start_revision = etcd.revision()
        started = time.monotonic()
        stop = threading.Event()

        def client(n: int) -> None:
            with grpc.insecure_channel(server.address) as channel:
                stub = chat_pb2_grpc.ChatStub(channel)
                while not stop.is_set():
                    list(stub.Generate(chat_pb2.GenerateRequest(session_key=f"k{n}", prompt="a")))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        stop.wait(2.5)  # the burst lasts 2.5 s
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        # Only this shard writes to etcd here (keep-alives do not bump the revision).
        writes = etcd.revision() - start_revision
        calls = server.accounting.calls_total
    assert calls > 50
    assert 1 <= writes <= elapsed / 1.0 + 1, (writes, elapsed, calls)
    assert etcd.get(schema.load("b")) is None  # deregistered on stop
