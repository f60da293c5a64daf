"""AsyncShardClient: the asyncio twin of :class:`~shardroute.client.ShardClient`.

Same router, same attempt plan and failover rules (``shardroute.transport``); only
the gRPC calls differ (``grpc.aio``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from shardroute._shell import ClientShell
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.source import TopologySource
from shardroute.model import Shard
from shardroute.transport._async_calls import AsyncCallLoops

if TYPE_CHECKING:
    from shardroute.sessions.migrator import MigrationResult

__all__ = ["AsyncShardClient"]


class AsyncShardClient(AsyncCallLoops, ClientShell):
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
        follow_overrides: bool = False,
        **kwargs: Any,
    ) -> AsyncShardClient:
        """A client following ``service`` in etcd (the source is started and owned);
        the arguments as :meth:`ShardClient.connect <shardroute.ShardClient.connect>`."""
        source_options = {"telemetry": kwargs.get("telemetry"), **(etcd_options or {})}
        if follow_overrides:
            source_options["include_sessions"] = True
        source = EtcdTopologySource(etcd, service, **source_options)
        await asyncio.to_thread(source.start)
        try:
            client = cls(source, **kwargs)
        except BaseException:
            source.close()
            raise
        client._owned_source = source
        return client

    def _create_channel(self, shard: Shard, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._channel_maker.aio_channel(shard, options)

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

    async def migrate(self, session_key: str, target: str | None = None) -> MigrationResult:
        """Move a session to ``target`` (or the router's choice) without losing a turn;
        this client then sends the session there (see :meth:`ShardClient.migrate
        <shardroute.client.ShardClient.migrate>`). The mover's etcd and shard calls
        block, so they run in a worker thread."""
        mover = self._mover()
        return await asyncio.to_thread(mover.migrate, session_key, target=target)

    async def end_session(self, session_key: str, *, timeout: float | None = None) -> bool:
        """End a conversation (see :meth:`ShardClient.end_session
        <shardroute.client.ShardClient.end_session>`)."""
        return bool((await self._end_session_call(session_key, timeout)).ended)

    async def close(self) -> None:
        """Close channels (and the source if this client created it). Idempotent."""
        self._core.close()
        await asyncio.to_thread(self._close_mover)
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._closing, return_exceptions=True)
        if self._owned_source is not None:
            await asyncio.to_thread(self._owned_source.close)

    async def __aenter__(self) -> AsyncShardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
