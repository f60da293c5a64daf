"""A counter service for exactly-once tests: every session is a list of applied
increments, and ``Add`` is not idempotent (it appends).

No protos: requests and replies are bytes, and :class:`CounterStub` is written the way
grpcio-tools writes stubs, so a shardroute client reads it like a generated one.
``Add(tag)`` appends ``tag`` to the session's list and answers the list's new length (as
ASCII digits); ``Get`` answers the list as JSON. The new list is checkpointed before the
reply goes out (``SessionHost.turn`` + ``checkpoint``), so with turn ids a retried
``Add`` is answered from the record instead of appending twice.

Start shards with ``ShardCluster(..., server_class=COUNTER_SHARD_CLASS, service="counter")``
(or the ``shard_server_class`` fixture).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from shardroute.server import AsyncShardServer, ShardServer

__all__ = [
    "ASYNC_COUNTER_SHARD_CLASS",
    "COUNTER_SERVICE",
    "COUNTER_SHARD_CLASS",
    "AsyncCounterShard",
    "CounterShard",
    "CounterStub",
    "tags_of",
]

COUNTER_SERVICE = "shardroute.testing.Counter"
COUNTER_SHARD_CLASS = "shardroute.testing.counter:CounterShard"
ASYNC_COUNTER_SHARD_CLASS = "shardroute.testing.counter:AsyncCounterShard"


def _same(data: bytes) -> bytes:
    return data


class CounterStub:
    """The counter's client stub: ``Add(tag: bytes) -> bytes`` (the new count),
    ``Get(b"") -> bytes`` (the applied tags as a JSON list)."""

    def __init__(self, channel: Any) -> None:
        self.Add = channel.unary_unary(
            f"/{COUNTER_SERVICE}/Add", request_serializer=_same, response_deserializer=_same
        )
        self.Get = channel.unary_unary(
            f"/{COUNTER_SERVICE}/Get", request_serializer=_same, response_deserializer=_same
        )


def tags_of(reply: bytes) -> list[str]:
    """The applied tags a ``Get`` reply lists, in order."""
    tags = json.loads(reply)
    assert isinstance(tags, list)
    return [str(tag) for tag in tags]


def _counter_handlers(add: Any, get: Any) -> Any:
    handlers = {
        "Add": grpc.unary_unary_rpc_method_handler(add),
        "Get": grpc.unary_unary_rpc_method_handler(get),
    }
    return (grpc.method_handlers_generic_handler(COUNTER_SERVICE, handlers),)


def _added(state: Any, request: bytes) -> tuple[list[str], bytes]:
    """The new state of an ``Add`` and its reply."""
    tags = [*(state or []), request.decode()]
    return tags, str(len(tags)).encode()


class CounterShard(ShardServer):
    """A shard of the counter service (threads); arguments as :class:`ShardServer`."""

    def add_services(self, server: grpc.Server) -> None:
        """Add the ``Counter`` service."""
        server.add_generic_rpc_handlers(_counter_handlers(self._add, self._get))

    def health_service_names(self) -> Sequence[str]:
        """The counter service's name, for the health service."""
        return (COUNTER_SERVICE,)

    def _add(self, request: bytes, context: Any) -> bytes:
        with self.sessions.turn(context) as session:
            tags, reply = _added(session.state, request)
            result: bytes = session.checkpoint(tags, reply=reply)
            return result

    def _get(self, request: bytes, context: Any) -> bytes:
        with self.sessions.turn(context) as session:
            return json.dumps(session.state or []).encode()


class AsyncCounterShard(AsyncShardServer):
    """A shard of the counter service (asyncio); arguments as :class:`AsyncShardServer`."""

    def add_services(self, server: grpc.aio.Server) -> None:
        """Add the ``Counter`` service."""
        server.add_generic_rpc_handlers(_counter_handlers(self._add, self._get))

    def health_service_names(self) -> Sequence[str]:
        """The counter service's name, for the health service."""
        return (COUNTER_SERVICE,)

    async def _add(self, request: bytes, context: Any) -> bytes:
        async with self.sessions.aturn(context) as session:
            tags, reply = _added(session.state, request)
            result: bytes = await session.checkpoint(tags, reply=reply)
            return result

    async def _get(self, request: bytes, context: Any) -> bytes:
        async with self.sessions.aturn(context) as session:
            return json.dumps(session.state or []).encode()
