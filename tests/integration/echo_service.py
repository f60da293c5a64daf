"""A tiny gRPC service without protos, for client tests: bytes in, bytes out.

``EchoStub`` is written the way grpcio-tools generates stubs, so the client reads it
like any generated stub.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from shardroute import metadata
from shardroute.model import Shard


def _same(data: bytes) -> bytes:
    return data


class EchoStub:
    def __init__(self, channel: Any) -> None:
        self.Echo = channel.unary_unary(
            "/test.Echo/Echo", request_serializer=_same, response_deserializer=_same
        )
        self.Block = channel.unary_unary(
            "/test.Echo/Block", request_serializer=_same, response_deserializer=_same
        )
        self.Fail = channel.unary_unary(
            "/test.Echo/Fail", request_serializer=_same, response_deserializer=_same
        )
        self.Missing = channel.unary_unary(
            "/test.Echo/Missing", request_serializer=_same, response_deserializer=_same
        )
        self.Count = channel.unary_stream(
            "/test.Echo/Count", request_serializer=_same, response_deserializer=_same
        )
        self.Upload = channel.stream_unary(
            "/test.Echo/Upload", request_serializer=_same, response_deserializer=_same
        )


class EchoServer:
    """A real gRPC server on a loopback port that answers as ``shard_id``."""

    def __init__(self, shard_id: str, zone: str = "") -> None:
        self.shard_id = shard_id
        self.zone = zone
        self.calls = 0
        self.redirect_to: str | None = None
        self.seen_metadata: list[dict[str, str]] = []
        self.block_entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(self._echo),
            "Block": grpc.unary_unary_rpc_method_handler(self._block),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            "Count": grpc.unary_stream_rpc_method_handler(self._count),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def shard(self) -> Shard:
        return Shard(self.shard_id, f"127.0.0.1:{self.port}", zone=self.zone, capacity=1000)

    def _record(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls += 1
            self.seen_metadata.append({k: v for k, v in context.invocation_metadata()})

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        if self.redirect_to is not None:  # like a shard that does not own the session
            context.set_trailing_metadata(((metadata.REDIRECT, self.redirect_to),))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"owned by {self.redirect_to}")
        return self.shard_id.encode() + b":" + request

    def _block(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        self.block_entered.set()
        self.release.wait(30)
        return self.shard_id.encode()

    def _fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad prompt")
        raise AssertionError("unreachable")

    def _count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        n = int(request or b"3")
        for i in range(n):
            yield f"{self.shard_id}:{i}".encode()
            if i == 0 and n > 100:  # long stream: hold after the first message
                self.block_entered.set()
                self.release.wait(30)

    def session_of_last_call(self) -> str | None:
        return self.seen_metadata[-1].get(metadata.SESSION_KEY) if self.seen_metadata else None

    def stop(self) -> None:
        self.release.set()
        self.server.stop(0).wait()
