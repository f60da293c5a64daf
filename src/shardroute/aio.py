"""AsyncShardClient: the asyncio twin of :class:`~shardroute.client.ShardClient`.

Same router, same attempt plan and failover rules (``shardroute.transport``); only
the gRPC calls differ (``grpc.aio``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio

from shardroute._core import ClientShell
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.source import TopologySource
from shardroute.model import Shard
from shardroute.transport import Attempts, MethodSpec

__all__ = ["AsyncShardClient"]


class AsyncShardClient(ClientShell):
    """Calls shards from asyncio code, choosing the shard per session in-process.

    ::

        client = await AsyncShardClient.connect("127.0.0.1:2379", "chat")
        chat = client.stub(chat_pb2_grpc.ChatStub)
        reply = await chat.History(request, session_key="conv-42", idempotent=True)
        async for token in chat.Generate(request, session_key="conv-42"):
            ...
        await client.close()

    Failover and ejection rules are those of :class:`~shardroute.client.ShardClient`.

    Async contract: use a client from one event loop (the one its first call runs
    in); channels are created in that loop. Topology updates arrive on the source's
    thread; channels of shards that left are closed on the loop.
    """

    def __init__(self, source: TopologySource, **kwargs: Any) -> None:
        """Same arguments as :class:`~shardroute.client.ShardClient`."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Future[None]] = set()
        super().__init__(source, **kwargs)

    @classmethod
    async def connect(
        cls,
        etcd: str | Sequence[str],
        service: str,
        *,
        etcd_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncShardClient:
        """A client following ``service`` in etcd (the source is started and owned)."""
        source = EtcdTopologySource(etcd, service, **(etcd_options or {}))
        await asyncio.to_thread(source.start)
        try:
            client = cls(source, **kwargs)
        except BaseException:
            source.close()
            raise
        client._owned_source = source
        return client

    def _create_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return grpc.aio.insecure_channel(address, options)

    def _close_channel(self, channel: grpc.aio.Channel) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._track(asyncio.ensure_future(channel.close(None)))
        else:
            loop.call_soon_threadsafe(
                lambda: self._track(asyncio.ensure_future(channel.close(None)))
            )

    def _track(self, future: asyncio.Future[None]) -> None:
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    async def end_session(self, session_key: str, *, timeout: float | None = None) -> bool:
        """End a conversation (see :meth:`ShardClient.end_session
        <shardroute.client.ShardClient.end_session>`)."""
        return bool((await self._end_session_call(session_key, timeout)).ended)

    async def _unary(
        self, spec: MethodSpec, request: Any, session_key: str, attempts: Attempts
    ) -> Any:
        core = self._core
        inflight = core.inflight
        shard: Shard | None = attempts.first()
        while shard is not None:
            method = core.channels.callable_for(shard, spec)
            timeout = attempts.timeout()
            inflight.begin(shard.id)
            try:
                response = await method(
                    request, timeout=timeout, metadata=attempts.metadata_for(shard)
                )
            except grpc.RpcError as error:
                inflight.end(shard.id)
                shard = attempts.failed(shard, error)
                continue
            except BaseException:
                inflight.end(shard.id)
                raise
            inflight.end(shard.id)
            attempts.succeeded(shard)
            return response
        raise attempts.exhausted()

    async def _stream(
        self, spec: MethodSpec, request: Any, session_key: str, attempts: Attempts
    ) -> AsyncIterator[Any]:
        core = self._core
        inflight = core.inflight
        shard: Shard | None = attempts.first()
        while shard is not None:
            method = core.channels.callable_for(shard, spec)
            timeout = attempts.timeout()
            inflight.begin(shard.id)
            call = None
            try:
                call = method(request, timeout=timeout, metadata=attempts.metadata_for(shard))
                async for message in call:
                    attempts.received = True
                    yield message
            except grpc.RpcError as error:
                failed: grpc.RpcError | None = error
            else:
                failed = None
            finally:
                inflight.end(shard.id)
                if call is not None:
                    call.cancel()
            if failed is not None:
                shard = attempts.failed(shard, failed)
                continue
            attempts.succeeded(shard)
            return
        raise attempts.exhausted()

    async def close(self) -> None:
        """Close channels (and the source if this client created it). Idempotent."""
        self._core.close()
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._closing, return_exceptions=True)
        if self._owned_source is not None:
            await asyncio.to_thread(self._owned_source.close)

    async def __aenter__(self) -> AsyncShardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
