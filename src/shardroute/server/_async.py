"""The asyncio shard server: ``grpc.aio.server``; same rules as the sync one."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import time
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute.errors import ConfigError, EtcdUnavailable, ServerLifecycleError
from shardroute.model import ShardState
from shardroute.server._async_control import control_calls
from shardroute.server._base import ShardServerBase
from shardroute.server._interceptor import AsyncLoadInterceptor
from shardroute.server._registration import Registrar
from shardroute.server.lifecycle import ServerState

__all__ = ["AsyncShardServer"]

log = logging.getLogger("shardroute.server")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AsyncShardServer(ShardServerBase):
    """The asyncio twin of :class:`~shardroute.server.ShardServer` (``grpc.aio.server``).

    Same constructor arguments (``max_workers`` is ignored: handlers run on the event
    loop) and the same lifecycle, with coroutines: ``await start()``, ``await drain()``,
    ``await stop()``, ``await wait()``, ``await serve_forever()``, ``async with``.

    Override :meth:`add_services` to add your servicers to the ``grpc.aio.Server``;
    handlers are coroutines (or async generators) running on the server's event loop.

    Thread/async contract: create and use the server on one event loop. Registration,
    keep-alive and load reports run in one background thread (etcd I/O is blocking), so
    :meth:`session_count` and :meth:`list_sessions` are called from that thread too:
    keep them thread-safe (reading ``len()`` of a dict is). The load report's
    ``queue_depth`` is always 0: an asyncio server has no worker queue to measure.
    """

    _grpc: grpc.aio.Server | None
    _health: Any
    _registrar: Registrar | None
    _stopped: asyncio.Event | None
    _drain_task: asyncio.Task[None] | None
    _stop_task: asyncio.Task[None] | None

    def _init_shell(self) -> None:
        self._grpc = None
        self._health = None
        self._registrar = None
        self._stopped = None
        self._drain_task = None
        self._stop_task = None

    # -- hooks ------------------------------------------------------------------------

    def add_services(self, server: grpc.aio.Server) -> None:
        """Add your servicers to ``server`` (called once by :meth:`start`, before bind)."""

    async def migrate_sessions_before_stop(self, deadline: float) -> None:
        """Move sessions elsewhere before stopping (drain), as
        :meth:`ShardServer.migrate_sessions_before_stop` does (the mover runs in a
        thread); sessions not moved are taken over from the session store by others."""
        await asyncio.to_thread(self._migrate_held_sessions, deadline)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> AsyncShardServer:
        """Bind, start serving, then register in etcd. Returns self.

        Raises :class:`~shardroute.errors.EtcdUnavailable` when etcd cannot be reached
        (unless ``wait_for_etcd``), :class:`~shardroute.errors.ConfigError` when the
        address cannot be bound, :class:`ServerLifecycleError` when already started.
        """
        if not self._lifecycle.advance(ServerState.STARTING):
            raise ServerLifecycleError(f"shard {self.shard_id}: start() in state {self.state}")
        config = self._config
        self._stopped = asyncio.Event()
        server = grpc.aio.server(
            interceptors=[AsyncLoadInterceptor(self._accounting, config.capacity)],
            options=config.grpc_options(),
        )
        self._grpc = server
        self._health = importlib.import_module("grpc_health.v1._async").HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        server.add_generic_rpc_handlers((control_calls(self),))
        self.add_services(server)
        try:
            self._bound_port = server.add_insecure_port(f"{config.host}:{config.port}")
        except RuntimeError as exc:
            await self._abort_start()
            raise ConfigError(
                f"shard {self.shard_id}: cannot listen on {config.host}:{config.port}: {exc}"
            ) from exc
        await server.start()
        self._address = config.advertised(self._bound_port)
        await self._set_health(_SERVING)
        if config.etcd is not None:
            registrar = Registrar(config, self.load)
            self._registrar = registrar
            try:
                await asyncio.to_thread(registrar.register, self._address)
            except EtcdUnavailable as exc:
                if not config.wait_for_etcd:
                    await self._abort_start()
                    raise EtcdUnavailable(
                        f"shard {self.shard_id} could not register in etcd at "
                        f"{', '.join(config.etcd)}: {exc}. start() fails fast when etcd is "
                        "unreachable; pass wait_for_etcd=True to serve anyway and register "
                        "once etcd is back"
                    ) from exc
                log.warning("shard %s serving without registration: %s", self.shard_id, exc)
            registrar.start_keepalive()
        try:
            await asyncio.to_thread(self._start_sessions, self._lease_id)
        except EtcdUnavailable as exc:
            if not config.wait_for_etcd:
                await self._abort_start()
                raise self._topology_unreachable(exc) from exc
            log.warning("shard %s: no session overrides until etcd is back: %s", self.shard_id, exc)
        self._lifecycle.advance(ServerState.SERVING)
        log.info("shard %s serving at %s", self.shard_id, self._address)
        return self

    def _lease_id(self) -> int | None:
        registrar = self._registrar
        return None if registrar is None else registrar.lease_id

    async def _abort_start(self) -> None:
        self._lifecycle.advance(ServerState.STOPPING)
        if self._registrar is not None:
            await asyncio.to_thread(self._registrar.close, deregister=False)
        if self._grpc is not None:
            await self._grpc.stop(None)
        await self._finish_stop()

    async def _finish_stop(self) -> None:
        # Closing the session host and its etcd client blocks: not on the event loop.
        await asyncio.to_thread(self._stop_sessions)
        self._lifecycle.advance(ServerState.STOPPED)
        if self._stopped is not None:
            self._stopped.set()

    async def stop(self, grace: float | None = None) -> None:
        """Deregister and stop serving. Idempotent; returns once stopped.

        ``grace``: seconds in-flight calls get to finish (None: cancel them at once).
        """
        if self._lifecycle.advance(ServerState.STOPPING):
            await self._set_health(_NOT_SERVING)
            if self._registrar is not None:
                await asyncio.to_thread(self._registrar.close, deregister=True)
            if self._grpc is not None:
                stopping = asyncio.ensure_future(self._grpc.stop(grace))  # refuses new calls
                if grace:
                    # Health watches and control calls must not hold the stop for the
                    # whole grace once the user's calls are done.
                    await self._wait_idle(time.monotonic() + grace)
                    await self._grpc.stop(0)
                await stopping
            await self._finish_stop()
            log.info("shard %s stopped", self.shard_id)
            return
        if self.state is ServerState.STOPPING and self._grpc is not None:
            await self._grpc.stop(grace)
        await self.wait()

    async def drain(self, grace_s: float | None = None) -> None:
        """Drain gracefully, then stop (see :meth:`ShardServer.drain`)."""
        grace = self._config.drain_grace_s if grace_s is None or grace_s <= 0 else grace_s
        if not self._lifecycle.advance(ServerState.DRAINING):
            if self.state in (ServerState.CREATED, ServerState.STARTING):
                await self.stop()
            await self.wait()
            return
        deadline = time.monotonic() + grace
        log.info("shard %s draining (grace %.1fs)", self.shard_id, grace)
        await self._set_health(_NOT_SERVING)
        if self._registrar is not None:
            await asyncio.to_thread(self._registrar.set_state, ShardState.DRAINING)
        await self.migrate_sessions_before_stop(deadline)
        if not await self._wait_idle(deadline):
            log.warning(
                "shard %s: %d calls still in flight at the end of the grace period",
                self.shard_id,
                self._accounting.inflight,
            )
        await self.stop(grace=max(0.0, deadline - time.monotonic()))

    async def _wait_idle(self, deadline: float) -> bool:
        # The counters change on this loop, so they are polled here (every 10 ms) rather
        # than waited for in a thread. True when no call is in flight any more.
        while self._accounting.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not self._accounting.inflight

    def begin_drain(self, grace_s: float | None = None) -> None:
        """Start :meth:`drain` as a task and return at once (call it on the loop)."""
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain(grace_s))

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the server stopped; False when ``timeout`` passed first."""
        if self.state is ServerState.STOPPED:
            return True
        if self._stopped is None:
            raise ServerLifecycleError(f"shard {self.shard_id}: wait() before start()")
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until drained or stopped; SIGTERM/SIGINT begin a
        graceful drain, a second signal stops at once (main thread's loop only)."""
        if self.state is ServerState.CREATED:
            await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        signals = [0]

        def on_signal() -> None:
            signals[0] += 1
            if signals[0] == 1:
                self.begin_drain()
            else:
                self._stop_task = loop.create_task(self.stop())

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread, or no signal support
        try:
            await self.wait()
            if self._drain_task is not None:
                await self._drain_task
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> AsyncShardServer:
        if self.state is ServerState.CREATED:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals --------------------------------------------------------------------

    async def _set_health(self, status: Any) -> None:
        for name in ("", *self.health_service_names()):
            await self._health.set(name, status)
