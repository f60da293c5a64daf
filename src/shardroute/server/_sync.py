"""The sync shard server: ``grpc.server`` on a thread pool."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shardroute.errors import ConfigError, EtcdUnavailable, ServerLifecycleError
from shardroute.model import ShardState
from shardroute.server._base import ShardServerBase
from shardroute.server._interceptor import CountingExecutor, LoadInterceptor
from shardroute.server._registration import Registrar
from shardroute.server._sync_control import control_calls
from shardroute.server.lifecycle import ServerState

__all__ = ["ShardServer"]

log = logging.getLogger("shardroute.server")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ShardServer(ShardServerBase):
    """One shard of a stateful service: a gRPC server that registers itself in etcd.

    Subclass it, override :meth:`add_services` to add your servicers, and run it::

        class ChatShard(ShardServer):
            def add_services(self, server: grpc.Server) -> None:
                chat_pb2_grpc.add_ChatServicer_to_server(ChatServicer(self), server)

        ChatShard(shard_id="s1", service="chat", etcd="10.0.0.1:2379").serve_forever()

    Args:
        shard_id: this shard's id (unique within the service; no ``/``).
        service: the service name (etcd keys under ``/shardroute/<service>/``).
        etcd: etcd endpoint(s) ``host:port``; None runs standalone (no registration).
        host, port: where to listen (port 0: a free port, see :attr:`port`).
        advertise_address: ``host:port`` written in the record when clients must use
            another address than the bound one (NAT, containers).
        zone, region, weight, capacity, labels: the shard record's fields
            (docs/etcd-schema.md). ``capacity`` is also the number of user calls
            served at once by default.
        lease_ttl_s: TTL of the lease holding the record and load report; a killed
            shard disappears from every client's topology within it (≥ 2).
        drain_grace_s: default time in-flight calls get to finish on a drain.
        max_workers: worker threads (default ``capacity + 8``).
        max_message_bytes: largest request or response message.
        etcd_timeout_s, etcd_ca_cert, etcd_cert_key, etcd_cert_cert, etcd_user,
            etcd_password: how to reach etcd (per-call timeout, TLS, authentication).
        wait_for_etcd: when etcd is unreachable at :meth:`start`, serve anyway and
            register in the background once it is back. Default False: ``start()``
            fails fast with :class:`~shardroute.errors.EtcdUnavailable`.

    Lifecycle: the constructor does no I/O. :meth:`start` may be called once: it binds,
    starts gRPC, marks the health service SERVING and registers in etcd (record and load
    report under one lease, kept alive by a daemon thread). :meth:`drain` marks the
    shard draining (etcd record, health NOT_SERVING), runs the migration hook, waits for
    in-flight calls up to the grace period, then stops. :meth:`stop` is idempotent: it
    deregisters (revokes the lease) and stops gRPC; with concurrent stops, the strictest
    (smallest) grace wins. :meth:`serve_forever` does all of it and turns SIGTERM/SIGINT
    into a graceful drain (a second signal stops at once).

    Thread contract: user handlers run on the worker pool, so anything they share (the
    sessions) must be thread-safe. Lifecycle methods may be called from any thread;
    hooks (:meth:`session_count`, :meth:`list_sessions`) are called from the registrar
    thread and from workers.
    """

    _grpc: grpc.Server | None
    _executor: CountingExecutor | None
    _health: health.HealthServicer
    _registrar: Registrar | None

    def _init_shell(self) -> None:
        self._grpc = None
        self._executor = None
        self._health = health.HealthServicer()
        self._registrar = None
        self._drain_lock = threading.Lock()
        self._drain_thread: threading.Thread | None = None

    # -- hooks ------------------------------------------------------------------------

    def add_services(self, server: grpc.Server) -> None:
        """Add your servicers to ``server`` (called once by :meth:`start`, before bind).

        Default: no user service (the shard serves only health and control).
        """

    def migrate_sessions_before_stop(self, deadline: float) -> None:
        """Move the sessions this shard holds elsewhere before it stops (drain).

        ``deadline`` is a ``time.monotonic()`` value. Default: every held session is
        moved by a :class:`~shardroute.sessions.Migrator` (to the router's choice among
        active shards), at most ``max_concurrent_moves`` at once. Sessions not moved are
        still in the session store: their next turn is taken over by another shard.
        """
        self._migrate_held_sessions(deadline)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> ShardServer:
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
        self._executor = CountingExecutor(
            config.workers, self._accounting, f"shardroute-{self.shard_id}"
        )
        server = grpc.server(
            self._executor,
            interceptors=[LoadInterceptor(self._accounting, config.capacity)],
            options=config.grpc_options(),
        )
        self._grpc = server
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        server.add_generic_rpc_handlers((control_calls(self),))
        self.add_services(server)
        try:
            self._bound_port = server.add_insecure_port(f"{config.host}:{config.port}")
        except RuntimeError as exc:
            self._abort_start()
            raise ConfigError(
                f"shard {self.shard_id}: cannot listen on {config.host}:{config.port}: {exc}"
            ) from exc
        server.start()
        self._address = config.advertised(self._bound_port)
        self._set_health(_SERVING)
        if config.etcd is not None:
            registrar = Registrar(config, self.load)
            self._registrar = registrar
            try:
                registrar.register(self._address)
            except EtcdUnavailable as exc:
                if not config.wait_for_etcd:
                    self._abort_start()
                    raise EtcdUnavailable(
                        f"shard {self.shard_id} could not register in etcd at "
                        f"{', '.join(config.etcd)}: {exc}. start() fails fast when etcd is "
                        "unreachable; pass wait_for_etcd=True to serve anyway and register "
                        "once etcd is back"
                    ) from exc
                log.warning(
                    "shard %s serving at %s without registration; retrying etcd: %s",
                    self.shard_id,
                    self._address,
                    exc,
                )
            registrar.start_keepalive()
        try:
            self._start_sessions(self._lease_id)
        except EtcdUnavailable as exc:
            if not config.wait_for_etcd:
                self._abort_start()
                raise self._topology_unreachable(exc) from exc
            log.warning("shard %s: no session overrides until etcd is back: %s", self.shard_id, exc)
        self._lifecycle.advance(ServerState.SERVING)
        log.info("shard %s serving at %s", self.shard_id, self._address)
        return self

    def _lease_id(self) -> int | None:
        registrar = self._registrar
        return None if registrar is None else registrar.lease_id

    def _abort_start(self) -> None:
        self._lifecycle.advance(ServerState.STOPPING)
        if self._registrar is not None:
            self._registrar.close(deregister=False)
        if self._grpc is not None:
            self._grpc.stop(None).wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._stop_sessions()
        self._lifecycle.advance(ServerState.STOPPED)

    def stop(self, grace: float | None = None) -> None:
        """Deregister and stop serving. Idempotent; blocks until stopped.

        ``grace``: seconds in-flight calls get to finish (None: cancel them at once).
        New calls are refused from now on. A concurrent stop with a smaller grace wins.
        """
        if self._lifecycle.advance(ServerState.STOPPING):
            self._set_health(_NOT_SERVING)
            if self._registrar is not None:
                self._registrar.close(deregister=True)
            if self._grpc is not None:
                done = self._grpc.stop(grace)  # refuses new calls from now on
                if grace:
                    # Once the user's calls are done, what is left are health watches and
                    # control calls: they must not hold the stop for the whole grace.
                    self._accounting.wait_idle(grace)
                    self._grpc.stop(0)
                done.wait()
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self._stop_sessions()
            self._lifecycle.advance(ServerState.STOPPED)
            log.info("shard %s stopped", self.shard_id)
            return
        if self.state is ServerState.STOPPING and self._grpc is not None:
            self._grpc.stop(grace)
        self._lifecycle.wait_for(frozenset({ServerState.STOPPED}))

    def drain(self, grace_s: float | None = None) -> None:
        """Drain gracefully, then stop. Blocks until stopped.

        Steps: state ``draining`` (etcd record rewritten, health NOT_SERVING; calls are
        still served), :meth:`migrate_sessions_before_stop`, wait for in-flight calls up
        to ``grace_s`` (default ``drain_grace_s``), deregister, stop. Calling it again,
        or on a server that is stopping, waits for the stop.
        """
        grace = self._config.drain_grace_s if grace_s is None or grace_s <= 0 else grace_s
        if not self._lifecycle.advance(ServerState.DRAINING):
            if self.state in (ServerState.CREATED, ServerState.STARTING):
                self.stop()
            self._lifecycle.wait_for(frozenset({ServerState.STOPPED}))
            return
        deadline = time.monotonic() + grace
        log.info("shard %s draining (grace %.1fs)", self.shard_id, grace)
        self._set_health(_NOT_SERVING)
        if self._registrar is not None:
            self._registrar.set_state(ShardState.DRAINING)
        self.migrate_sessions_before_stop(deadline)
        if not self._accounting.wait_idle(deadline - time.monotonic()):
            log.warning(
                "shard %s: %d calls still in flight at the end of the grace period",
                self.shard_id,
                self._accounting.inflight,
            )
        self.stop(grace=max(0.0, deadline - time.monotonic()))

    def begin_drain(self, grace_s: float | None = None) -> None:
        """Start :meth:`drain` in a background thread and return at once. Only the first
        call starts one; later calls (a second Drain RPC, a second signal) do nothing."""
        with self._drain_lock:
            if self._drain_thread is not None:
                return
            self._drain_thread = threading.Thread(
                target=self.drain, args=(grace_s,), name=f"shardroute-drain-{self.shard_id}"
            )
        self._drain_thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stopped; False when ``timeout`` passed first.

        Raises :class:`ServerLifecycleError` before :meth:`start` (nothing would ever
        stop it), as the asyncio server does.
        """
        if self.state is ServerState.CREATED:
            raise ServerLifecycleError(f"shard {self.shard_id}: wait() before start()")
        return self._lifecycle.wait_for(frozenset({ServerState.STOPPED}), timeout)

    def serve_forever(self) -> None:
        """Start (if needed) and serve until drained or stopped.

        From the main thread it installs SIGTERM and SIGINT handlers: the first signal
        begins a graceful drain, a second one stops at once. The previous handlers are
        restored on return.
        """
        if self.state is ServerState.CREATED:
            self.start()
        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            signals = [0]

            def on_signal(signum: int, frame: FrameType | None) -> None:
                signals[0] += 1
                if signals[0] == 1:
                    log.info("shard %s: signal %d, draining", self.shard_id, signum)
                    self.begin_drain()
                else:
                    threading.Thread(target=self.stop, daemon=True).start()

            for sig in (signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, on_signal)
        try:
            while not self.wait(timeout=1.0):
                pass
        finally:
            for sig, previous in installed.items():
                signal.signal(sig, previous)

    def __enter__(self) -> ShardServer:
        if self.state is ServerState.CREATED:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------

    def _set_health(self, status: Any) -> None:
        for name in ("", *self.health_service_names()):
            self._health.set(name, status)
