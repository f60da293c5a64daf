"""The shard server's shell, written once for asyncio: :class:`AsyncShardServer`. The
threaded :class:`ShardServer` (``_sync.py``) is generated from this file by
``scripts/unasync.py``; what differs between the two lives in :mod:`._grpc_aio` and
:mod:`._grpc_threads` (same names)."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute._io.aio import run_blocking
from shardroute._listen import host_port
from shardroute._validate import grace_or, seconds
from shardroute.errors import ConfigError, EtcdUnavailable, ServerLifecycleError
from shardroute.model import ShardState
from shardroute.server._async_control import control_calls
from shardroute.server._base import ShardServerBase
from shardroute.server._grpc_aio import (
    begin_stop,
    end_stop,
    install_signals,
    join_background,
    new_server,
    start_background,
    wait_idle,
)
from shardroute.server._registration import Registrar
from shardroute.server.control import REPLY_GRACE_S
from shardroute.server.drain import log_stop
from shardroute.server.lifecycle import ServerState

__all__ = ["AsyncShardServer"]

log = logging.getLogger("shardroute.server")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_STOPPED = frozenset({ServerState.STOPPED})


class AsyncShardServer(ShardServerBase):
    """One shard of a stateful service: a gRPC server that registers itself in etcd.

    Subclass it, override :meth:`add_services` to add your servicers, and run it::

        class ChatShard(AsyncShardServer):
            def add_services(self, server: grpc.aio.Server) -> None:
                chat_pb2_grpc.add_ChatServicer_to_server(ChatServicer(self), server)

        await ChatShard(shard_id="s1", service="chat", etcd="10.0.0.1:2379").serve_forever()

    Two flavours, one source: :class:`AsyncShardServer` (``grpc.aio``, handlers are
    coroutines on the server's event loop; lifecycle methods are coroutines) and
    :class:`ShardServer` (``grpc.server`` on a worker pool; ``max_workers`` threads),
    generated from it. The asyncio server's load report has ``queue_depth`` 0 (no worker
    queue to measure).

    Args:
        shard_id: this shard's id (unique within the service; no ``/``).
        service: the service name (etcd keys under ``/shardroute/<service>/``).
        etcd: etcd endpoint(s) ``host:port``; None runs standalone (no registration).
        host: the address to listen on.
        port: the port to listen on (0: a free port, see :attr:`port`).
        advertise_address: ``host:port`` written in the record when clients must use
            another address than the bound one (NAT, containers).
        zone: the shard record's zone (docs/etcd-schema.md).
        region: the shard record's region.
        weight: the shard record's weight: its share of the ring.
        capacity: the shard record's capacity, also the number of user calls served
            at once by default.
        labels: the shard record's labels.
        lease_ttl_s: TTL of the lease holding the record and load report; a killed
            shard disappears from every client's topology within it (≥ 2, default
            10; kept alive every ``lease_ttl_s / 4``).
        drain_grace_s: default time in-flight calls get to finish on a drain.
        max_workers: worker threads (default ``capacity + 8``).
        max_message_bytes: largest request or response message.
        etcd_timeout_s: the per-call etcd timeout. It defaults to
            ``min(5, lease_ttl_s / 2)`` and may not exceed ``lease_ttl_s / 2``
            (:class:`~shardroute.errors.ConfigError`).
        etcd_ca_cert: PEM file path of the CA that signs etcd's certificate (TLS).
        etcd_cert_key: PEM file path of the client certificate's key for etcd.
        etcd_cert_cert: PEM file path of the client certificate for etcd.
        etcd_user: etcd authentication: the user name.
        etcd_password: etcd authentication: the password.
        wait_for_etcd: when etcd is unreachable at :meth:`start`, serve anyway and
            register in the background once it is back; until the shard has read the
            topology and holds a lease, it takes over no session (such calls are
            refused with ``UNAVAILABLE``, not executed, and retried by clients).
            Default False: ``start()`` fails fast with
            :class:`~shardroute.errors.EtcdUnavailable`.
        tls: serve TLS (a :class:`~shardroute.security.TLSConfig` with ``cert`` and
            ``key``; with ``ca``, mutual TLS: client certificates required) or
            ``grpc.ServerCredentials`` of your own; None: plaintext (docs/security.md).
        peer_tls: how this shard's drains call other shards (default: ``tls`` when it
            is a TLSConfig, its certificate serving as a client certificate).
        control_auth: who may call the control service
            (:class:`~shardroute.security.ControlAuth`: a token, mTLS identities);
            None: only callers on this machine.

    Lifecycle: the constructor does no I/O. :meth:`start` may be called once: it binds,
    starts gRPC, marks the health service SERVING and registers in etcd (record and load
    report under one lease, kept alive by a daemon thread). :meth:`drain` marks the
    shard draining (etcd record, health NOT_SERVING), runs the migration hook, waits for
    in-flight calls up to the grace period, then stops. :meth:`stop` is idempotent: it
    deregisters (revokes the lease) and stops gRPC; with concurrent stops, the strictest
    (smallest) grace wins. :meth:`serve_forever` does all of it and turns SIGTERM/SIGINT
    into a graceful drain (a second signal stops at once).

    Thread contract: user handlers run on the worker pool (threads) or the event loop
    (asyncio), so anything they share (the sessions) must be thread-safe. Lifecycle
    methods of the threaded server may be called from any thread, those of the asyncio
    server on its loop; hooks (:meth:`session_count`, :meth:`list_sessions`) are called
    from the registrar thread too.
    """

    _grpc: grpc.aio.Server | None
    _executor: Any
    _health: Any
    _registrar: Registrar | None
    _background: Any

    def _init_shell(self) -> None:
        self._grpc = None
        self._executor = None
        self._health = None
        self._registrar = None
        self._background = None
        self._background_lock = threading.Lock()

    # -- hooks ------------------------------------------------------------------------

    def add_services(self, server: grpc.aio.Server) -> None:
        """Add your servicers to ``server`` (called once by :meth:`start`, before bind).

        Default: no user service (the shard serves only health and control).
        """

    async def migrate_sessions_before_stop(self, deadline: float) -> None:
        """Move the sessions this shard holds elsewhere before it stops (drain).

        ``deadline`` is a ``time.monotonic()`` value. Default: every held session is
        moved by a :class:`~shardroute.sessions.Migrator` (to the router's choice among
        active shards, in a worker thread), at most ``max_concurrent_moves`` at once.
        Sessions not moved are still in the session store: their next turn is taken
        over by another shard.
        """
        await run_blocking(self._migrate_held_sessions, deadline)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> AsyncShardServer:
        """Bind, start serving, then register in etcd. Returns self.

        Raises:
            EtcdUnavailable: etcd could not be reached to register (unless
                ``wait_for_etcd``); the gRPC server is stopped again.
            ConfigError: the address could not be bound.
            ServerLifecycleError: the server was already started or stopped.
        """
        if not self._lifecycle.advance(ServerState.STARTING):
            raise ServerLifecycleError(f"shard {self.shard_id}: start() in state {self.state}")
        config = self._config
        server, self._health, self._executor = new_server(
            config, self._accounting, f"shardroute-{self.shard_id}", self.telemetry
        )
        self._grpc = server
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        server.add_generic_rpc_handlers((control_calls(self),))
        self.add_services(server)
        try:
            self._bound_port = config.listen(server)
        except RuntimeError as exc:
            await self._abort_start()
            raise ConfigError(
                f"shard {self.shard_id}: cannot listen on {host_port(config.host, config.port)} "
                f"({exc}): another process has the port, or the address is not this "
                "machine's; nothing was registered; choose another (port 0: any free port)"
            ) from exc
        await server.start()
        self._address = config.advertised(self._bound_port)
        self._warn_closed_control()
        await self._set_health(_SERVING)
        if config.etcd is not None:
            registrar = Registrar(config, self.load)
            self._registrar = registrar
            try:
                await run_blocking(registrar.register, self._address)
            except EtcdUnavailable as exc:
                if not config.wait_for_etcd:
                    await self._abort_start()
                    raise EtcdUnavailable(
                        f"shard {self.shard_id} could not register in etcd at "
                        f"{', '.join(config.etcd)}: {exc}. start() fails fast when etcd is "
                        "unreachable; pass wait_for_etcd=True (shardroute serve: "
                        "--wait-for-etcd) to serve anyway and register once etcd is back"
                    ) from exc
                log.warning(
                    "shard %s serves at %s but could not register in etcd (%s): clients cannot "
                    "find it until it does, and it keeps retrying; no data is at risk; check "
                    "that etcd is reachable",
                    self.shard_id,
                    self._address,
                    exc,
                )
            registrar.start_keepalive()
        try:
            await run_blocking(self._start_sessions, self._lease_id)
        except EtcdUnavailable as exc:
            if not config.wait_for_etcd:
                await self._abort_start()
                raise self._topology_unreachable(exc) from exc
            log.warning(
                "shard %s cannot follow the topology in etcd (%s): it takes no session over "
                "until it can (such calls are refused and clients retry them); no data is at "
                "risk; check that etcd is reachable",
                self.shard_id,
                exc,
            )
        self._lifecycle.advance(ServerState.SERVING)
        log.info("shard %s serving at %s", self.shard_id, self._address)
        return self

    def _lease_id(self) -> int | None:
        """The lease sessions are held and overrides written under, while etcd confirms
        it (:meth:`Registrar.live_lease`)."""
        registrar = self._registrar
        return None if registrar is None else registrar.live_lease()

    async def _abort_start(self) -> None:
        self._lifecycle.advance(ServerState.STOPPING)
        registrar = self._registrar
        if registrar is not None:
            await run_blocking(lambda: registrar.close(deregister=False))
        if self._grpc is not None:
            await end_stop(begin_stop(self._grpc, None))
        await self._finish_stop()

    async def _finish_stop(self) -> int:
        """Close what is left; returns how many sessions the shard held."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        held = len(self._sessions)
        # Closing the session host and its etcd client blocks: off the event loop.
        await run_blocking(self._stop_sessions)
        self._moves_ended.set()
        self._lifecycle.advance(ServerState.STOPPED)
        return held

    async def stop(self, grace: float | None = None) -> None:
        """Deregister and stop serving. Idempotent; returns once stopped.

        ``grace``: seconds in-flight calls get to finish (None: cancel them at once).
        New calls are refused from now on. A concurrent stop with a smaller grace wins.
        One exception: while a Drain call's reply (the drain's counts) may be on its way
        out, the calls get up to :data:`~shardroute.server.control.REPLY_GRACE_S` (1 s)
        instead of being cancelled at once.
        """
        if grace is not None:
            seconds("grace", grace, zero=True)
        if self._lifecycle.advance(ServerState.STOPPING):
            await self._set_health(_NOT_SERVING)
            registrar = self._registrar
            if registrar is not None:
                await run_blocking(lambda: registrar.close(deregister=True))
            if self._grpc is not None:
                if not grace and self._answers.replies_pending():
                    grace = REPLY_GRACE_S  # a Drain reply on its way out: its counts
                stopping = begin_stop(self._grpc, grace)  # refuses new calls from now on
                if grace:
                    # Once the user's calls are done, what is left are health watches and
                    # control calls: they must not hold the stop for the whole grace.
                    await wait_idle(self._accounting, time.monotonic() + grace)
                    # ... except a Drain reply on its way out (its counts)
                    replies = REPLY_GRACE_S if self._answers.replies_pending() else 0
                    await end_stop(begin_stop(self._grpc, replies))
                await end_stop(stopping)
            held = await self._finish_stop()
            log_stop(self.shard_id, held, self.last_drain, self._sessions.store)
            return
        if self.state is ServerState.STOPPING and self._grpc is not None:
            begin_stop(self._grpc, grace)  # the strictest grace wins
        await run_blocking(self._lifecycle.wait_for, _STOPPED)

    async def drain(self, grace_s: float | None = None) -> None:
        """Drain gracefully, then stop. Returns once stopped.

        Steps: state ``draining`` (etcd record rewritten, health NOT_SERVING; calls are
        still served), :meth:`migrate_sessions_before_stop`, wait for in-flight calls up
        to ``grace_s`` (default ``drain_grace_s``; a warning names the calls still
        running then), deregister, stop. Calling it again, or on a server that is
        stopping, waits for the stop.
        """
        grace = grace_or(grace_s, self._config.drain_grace_s)
        if not self._lifecycle.advance(ServerState.DRAINING):
            if self.state in (ServerState.CREATED, ServerState.STARTING):
                await self.stop()
            await run_blocking(self._lifecycle.wait_for, _STOPPED)
            return
        deadline = time.monotonic() + grace
        log.info("shard %s draining (grace %.1fs)", self.shard_id, grace)
        await self._set_health(_NOT_SERVING)
        if self._registrar is not None:
            await run_blocking(self._registrar.set_state, ShardState.DRAINING)
        try:
            await self.migrate_sessions_before_stop(deadline)
        finally:
            self._moves_ended.set()  # a Drain call waiting for the counts answers now
        if not await wait_idle(self._accounting, deadline):
            log.warning(
                "shard %s: %d calls still in flight at the end of the grace period are "
                "cancelled: their callers get an error, and each session keeps its last "
                "saved turn; raise drain_grace_s if calls need longer",
                self.shard_id,
                self._accounting.inflight,
            )
        await self.stop(grace=max(0.0, deadline - time.monotonic()))

    def begin_drain(self, grace_s: float | None = None) -> None:
        """Start :meth:`drain` in the background and return at once. Only the first call
        starts one; later calls (a second Drain RPC, a second signal) do nothing."""
        grace_or(grace_s, self._config.drain_grace_s)  # refused here, not in the background
        with self._background_lock:
            if self._background is None:
                self._background = start_background(
                    f"shardroute-drain-{self.shard_id}", lambda: self.drain(grace_s)
                )

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the server stopped; False when ``timeout`` passed first.

        Raises :class:`ServerLifecycleError` before :meth:`start` (nothing would ever
        stop it).
        """
        if self.state is ServerState.CREATED:
            raise ServerLifecycleError(f"shard {self.shard_id}: wait() before start()")
        return await run_blocking(self._lifecycle.wait_for, _STOPPED, timeout)

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until drained or stopped.

        SIGTERM and SIGINT (main thread only) begin a graceful drain; a second signal
        stops at once. The previous signal handling is restored on return.
        """
        if self.state is ServerState.CREATED:
            await self.start()
        signals = [0]

        def on_signal() -> None:
            signals[0] += 1
            if signals[0] == 1:
                log.info("shard %s: signal, draining", self.shard_id)
                self.begin_drain()
            else:
                start_background(f"shardroute-stop-{self.shard_id}", self.stop)

        restore = install_signals(on_signal)
        try:
            while not await self.wait(timeout=1.0):
                pass
            if self._background is not None:
                await join_background(self._background)
        finally:
            restore()

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
        if self._health is None:  # never started: no health service to tell
            return
        for name in ("", *self.health_service_names()):
            await self._health.set(name, status)
