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

from shardroute._core import CallOptions, ClientShell
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.source import TopologySource
from shardroute.routing import Decision
from shardroute.transport import Attempts, MethodSpec
from shardroute.transport.attempts import Metadata

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
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> Any:
        core = self._core
        channels, inflight = core.channels, core.inflight
        shard = decision.shard
        attempts: Attempts | None = None  # built only if an attempt fails
        while True:
            shard_id = shard.id
            method = channels.callable_for(shard, spec)
            inflight.begin(shard_id)
            try:
                response = await method(request, timeout=timeout, metadata=md)
            except grpc.RpcError as error:
                inflight.end(shard_id)
                failed = error
            except BaseException:
                inflight.end(shard_id)
                raise
            else:
                inflight.end(shard_id)
                core.succeeded(attempts, session_key, decision, shard)
                return response
            attempts, shard, timeout, md = core.failed(
                attempts, spec, session_key, decision, started, timeout, options, shard, failed
            )

    async def _stream(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> AsyncIterator[Any]:
        core = self._core
        channels, inflight = core.channels, core.inflight
        shard = decision.shard
        attempts: Attempts | None = None  # built only if an attempt fails
        received = False
        while True:
            shard_id = shard.id
            method = channels.callable_for(shard, spec)
            inflight.begin(shard_id)
            call = None
            failed: grpc.RpcError | None = None
            try:
                call = method(request, timeout=timeout, metadata=md)
                async for message in call:
                    received = True
                    yield message
            except grpc.RpcError as error:
                failed = error
            finally:
                inflight.end(shard_id)
                if call is not None:
                    call.cancel()  # no-op when finished; stops it if the caller stopped early
            if failed is None:
                core.succeeded(attempts, session_key, decision, shard)
                return
            attempts, shard, timeout, md = core.failed(
                attempts,
                spec,
                session_key,
                decision,
                started,
                timeout,
                options,
                shard,
                failed,
                received,
            )

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
