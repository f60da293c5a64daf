"""What the sync and asyncio shard servers share: configuration, hooks, status, control.

The control service's answers are built here as plain functions of the server's state;
the two shells only wrap them in a sync or an async handler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from shardroute import metadata
from shardroute._validate import seconds
from shardroute.errors import ConfigError, EtcdUnavailable, InvalidSessionKey, ServerLifecycleError
from shardroute.etcd import EtcdOptions
from shardroute.model import LoadReport, Topology
from shardroute.security import ChannelSecurity, ControlAuth, ControlGuard, ServerSecurity
from shardroute.server.config import DEFAULT_LEASE_TTL_S, DEFAULT_MAX_MESSAGE_BYTES, ServerConfig
from shardroute.server.control import ControlAnswers
from shardroute.server.drain import DrainSummary, move_all, not_moved_summary
from shardroute.server.lifecycle import Lifecycle, ServerState
from shardroute.server.load import LoadAccounting
from shardroute.sessions import SessionCodec, SessionHost, SessionSummary
from shardroute.sessions.envelope import FoldPolicy
from shardroute.sessions.migrator import MAX_CONCURRENT_MOVES
from shardroute.sessions.store_url import check_store_choice, open_session_store
from shardroute.telemetry import Telemetry
from shardroute.telemetry.migration import drain_span
from shardroute.telemetry.server import LIVE_SHARDS, shard_instruments

__all__ = ["ServerLifecycleError", "ShardServerBase", "session_key"]

log = logging.getLogger("shardroute.server")


class _HasInvocationMetadata(Protocol):
    def invocation_metadata(self) -> Any: ...


def session_key(context: _HasInvocationMetadata) -> str | None:
    """The session key of the current call (:data:`shardroute.metadata.SESSION_KEY`
    request metadata, decoded: any UTF-8 key, ``/`` and spaces included), or None when
    the caller sent none or a malformed one (a session turn then answers
    ``INVALID_ARGUMENT`` saying why).

    Works with the sync ``grpc.ServicerContext`` and ``grpc.aio.ServicerContext``.
    """
    md: Iterable[tuple[str, str | bytes]] | None = context.invocation_metadata()
    try:
        return metadata.get_session_key(md)
    except InvalidSessionKey:
        return None


class ShardServerBase:
    """Configuration, load accounting and the overridable hooks of a shard server.

    Not used directly: subclass :class:`~shardroute.server.ShardServer` or
    :class:`~shardroute.server.AsyncShardServer`.
    """

    def __init__(
        self,
        *,
        shard_id: str,
        service: str,
        etcd: EtcdOptions | str | Sequence[str] | None,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_address: str | None = None,
        zone: str = "",
        region: str = "",
        weight: float = 1.0,
        capacity: int = 64,
        labels: Mapping[str, str] | None = None,
        lease_ttl_s: int = DEFAULT_LEASE_TTL_S,
        drain_grace_s: float = 10.0,
        max_workers: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        etcd_timeout_s: float | None = None,
        etcd_ca_cert: str | None = None,
        etcd_cert_key: str | None = None,
        etcd_cert_cert: str | None = None,
        etcd_user: str | None = None,
        etcd_password: str | None = None,
        wait_for_etcd: bool = False,
        session_store: Any = None,
        session_codec: SessionCodec[Any] | None = None,
        hold_timeout_s: float = 5.0,
        checkpoint_retry_s: float = 10.0,
        max_concurrent_moves: int = 4,
        session_idle_ttl_s: float = 600.0,
        session_ttl_s: float | None = None,
        session_fold: FoldPolicy | Mapping[str, Any] | None = None,
        tls: ServerSecurity = None,
        peer_tls: ChannelSecurity = None,
        control_auth: ControlAuth | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        seconds("hold_timeout_s", hold_timeout_s)
        seconds("checkpoint_retry_s", checkpoint_retry_s, zero=True)
        seconds("session_idle_ttl_s", session_idle_ttl_s)
        if session_ttl_s is not None:
            seconds("session_ttl_s", session_ttl_s)
        self.session_ttl_s = session_ttl_s
        """Idle sessions' stored state expires after this long (the default stores only)."""
        if isinstance(session_fold, Mapping):
            session_fold = FoldPolicy(**session_fold)
        self.session_fold = session_fold
        """When checkpoints write a snapshot instead of a turn record (default stores only)."""
        if not 1 <= max_concurrent_moves <= MAX_CONCURRENT_MOVES:
            raise ConfigError(
                f"max_concurrent_moves must be in 1..{MAX_CONCURRENT_MOVES}, "
                f"got {max_concurrent_moves!r}"
            )
        if isinstance(etcd, EtcdOptions):  # the one settings object, or the keywords
            given = (etcd_ca_cert, etcd_cert_key, etcd_cert_cert, etcd_user, etcd_password)
            if any(value is not None for value in given):
                raise ConfigError("pass etcd settings either as EtcdOptions or as etcd_* arguments")
            etcd_timeout_s = etcd.timeout
            etcd_ca_cert, etcd_cert_key, etcd_cert_cert = (
                etcd.ca_cert,
                etcd.cert_key,
                etcd.cert_cert,
            )
            etcd_user, etcd_password = etcd.user, etcd.password
            etcd = etcd.endpoints
        self._config = ServerConfig(
            shard_id=shard_id,
            service=service,
            etcd=(etcd,) if isinstance(etcd, str) else None if etcd is None else tuple(etcd),
            host=host,
            port=port,
            advertise_address=advertise_address,
            zone=zone,
            region=region,
            weight=weight,
            capacity=capacity,
            labels=labels or {},
            lease_ttl_s=lease_ttl_s,
            drain_grace_s=drain_grace_s,
            max_workers=max_workers,
            max_message_bytes=max_message_bytes,
            etcd_timeout_s=etcd_timeout_s,
            etcd_ca_cert=etcd_ca_cert,
            etcd_cert_key=etcd_cert_key,
            etcd_cert_cert=etcd_cert_cert,
            etcd_user=etcd_user,
            etcd_password=etcd_password,
            wait_for_etcd=wait_for_etcd,
            tls=tls,
            peer_tls=peer_tls,
            control_auth=control_auth,
        )
        self._control_guard = ControlGuard(control_auth, shard_id)
        self._accounting = LoadAccounting()
        self._lifecycle = Lifecycle()
        self._bound_port = 0
        self._address = ""
        self._session_store_arg = check_store_choice(session_store)
        self._owned_store: Any = None  # a store made here from a name or URL
        self.max_concurrent_moves = max_concurrent_moves
        self.migrate_on_drain = True
        """Whether a drain moves held sessions away (a Drain RPC may turn it off)."""
        self.last_drain: DrainSummary | None = None
        """Moves of the last drain (None before any)."""
        self._moves_ended = threading.Event()  # set once a drain's moves ended, or stopped
        warms = type(self).warm_session is not ShardServerBase.warm_session
        self._sessions = SessionHost(
            shard_id,
            codec=session_codec,
            hold_timeout_s=hold_timeout_s,
            on_warm=self.warm_session if warms else None,
            idle_ttl_s=session_idle_ttl_s,
            wait_workers=self._config.workers,
            checkpoint_retry_s=checkpoint_retry_s,
        )
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        """Where this shard's spans and metrics go (docs/observability.md)."""
        self._sessions.telemetry = self.telemetry
        LIVE_SHARDS.add(self)  # its gauges: in flight, queue, sessions held
        if self.telemetry.active():  # the gauges exist before the first call
            shard_instruments(self.telemetry)
        self._answers = ControlAnswers(self)
        """The ``ShardControl`` answers (docs/protocol.md), served by the shell."""
        self._session_etcd: Any = None
        self._topology_source: Any = None
        self._init_shell()

    def _init_shell(self) -> None:
        """Set up the shell's own attributes (no I/O)."""

    # -- identity and state ---------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        """The validated configuration."""
        return self._config

    @property
    def shard_id(self) -> str:
        """This shard's id."""
        return self._config.shard_id

    @property
    def service(self) -> str:
        """The service this shard belongs to."""
        return self._config.service

    @property
    def state(self) -> ServerState:
        """Where the server is in its lifecycle."""
        return self._lifecycle.state

    @property
    def port(self) -> int:
        """The bound port (0 before ``start()``)."""
        return self._bound_port

    @property
    def address(self) -> str:
        """``host:port`` clients reach it at (in its etcd record); empty before start."""
        return self._address

    @property
    def sessions(self) -> SessionHost:
        """The sessions this shard holds (:class:`~shardroute.server.SessionHost`):
        ``with shard.sessions.turn(context) as session`` in a handler."""
        return self._sessions

    @property
    def topology(self) -> Topology | None:
        """The service's topology as this shard follows it (with session overrides), or
        None when standalone or before ``start()``."""
        source = self._topology_source
        return None if source is None else source.current()

    @property
    def accounting(self) -> LoadAccounting:
        """Live load counters (in-flight, queue depth, latency window)."""
        return self._accounting

    def load(self) -> LoadReport:
        """The shard's current load, as it would be reported to etcd."""
        return self._accounting.report(self._safe_session_count())

    def _safe_session_count(self) -> int:
        try:
            return int(self.session_count())
        except Exception:
            return 0

    # -- hooks for subclasses -------------------------------------------------------

    def health_service_names(self) -> Sequence[str]:
        """Fully qualified names of the user's services, for the health service.

        The overall status (service ``""``) is always set; names returned here get the
        same status. Default: none.
        """
        return ()

    def list_sessions(self) -> Sequence[SessionSummary]:
        """The sessions this shard holds (served by ``ShardControl.ListSessions``).

        Called from gRPC worker threads (sync) or the event loop (asyncio): make it
        thread-safe and cheap. Default: the sessions of :attr:`sessions`.
        """
        return self._sessions.summaries()

    def session_count(self) -> int:
        """How many sessions this shard holds (the ``sessions`` of its load report).

        Called about five times a second by the registrar thread; override it with
        something cheaper than ``len(self.list_sessions())`` when you can. Default: the
        number held by :attr:`sessions`.
        """
        return len(self._sessions)

    def export_session(self, session_key: str, epoch: int) -> bytes:
        """One session's state as bytes, for ``ExportSession`` (blocking; runs in a
        worker thread on both servers).

        Default: :meth:`SessionHost.export` (waits for the session's in-flight turn,
        freezes it, returns the bytes last saved; loads from the store when the session
        is not held). Raise :class:`~shardroute.server.Refused` to refuse.
        """
        return self._sessions.export(session_key, epoch)

    def import_session(self, session_key: str, epoch: int, data: bytes) -> None:
        """Take in a session's state from ``ImportSession`` (verified bytes; blocking).
        Default: :meth:`SessionHost.import_state` (holds it, imported but not owned until
        the override names this shard; decoded at its first turn, or warm hook)."""
        self._sessions.import_state(session_key, epoch, data)

    def warm_session(self, session_key: str, state: Any) -> None:
        """Pre-warm an imported session before it takes traffic (``WarmSession``): load
        caches, a KV cache, ... ``state`` is the decoded state. Default: nothing (and a
        shard that does not override it decodes an import at its first turn instead)."""

    def release_session(self, session_key: str, epoch: int, new_owner: str) -> bool:
        """End a move on this shard (``ReleaseSession``): drop the session when
        ``new_owner`` names another shard (later calls are redirected there), or
        unfreeze and serve it again when ``new_owner`` is empty (rollback). Returns
        whether the session was held. Default: :meth:`SessionHost.release`."""
        return self._sessions.release(session_key, epoch, new_owner)

    # -- sessions wiring (blocking; the asyncio shell runs these in a thread) ---------

    def _start_sessions(self, lease: Callable[[], int | None]) -> None:
        """Attach the store, override store and topology to the session host."""
        from shardroute.sessions import EtcdSessionStore, InMemorySessionStore, OverrideStore
        from shardroute.sessions.admission import Admission

        config = self._config
        store = self._session_store_arg
        if isinstance(store, str):  # "etcd" (None: the default below), "memory", a URL
            store = self._owned_store = open_session_store(
                store, service=config.service, ttl_s=self.session_ttl_s, fold=self.session_fold
            )
        if config.etcd is None:
            ttl = self.session_ttl_s
            fold = self.session_fold
            self._sessions.attach(
                store if store is not None else InMemorySessionStore(ttl_s=ttl, fold=fold)
            )
            return
        from shardroute.discovery.etcd import EtcdTopologySource
        from shardroute.etcd import EtcdClient

        etcd = EtcdClient(config.etcd_options())
        self._session_etcd = etcd
        source = EtcdTopologySource(config.etcd_options(), config.service, include_sessions=True)
        admission = Admission(config.shard_id, self._accounting.load_now)
        self._sessions.attach(
            store
            if store is not None
            else EtcdSessionStore(
                etcd, config.service, ttl_s=self.session_ttl_s, fold=self.session_fold
            ),
            overrides=OverrideStore(etcd, config.service),
            topology=source.current,
            lease=lease,
            # No take-over without a topology and a live lease: it would guess.
            ready=lambda: source.loaded and lease() is not None,
            admit=admission.target,
        )
        source.subscribe(self._sessions.topology_changed)
        source.subscribe(admission.topology_changed)  # its ring, off the request path
        try:
            source.start(keep_trying=config.wait_for_etcd)
        except EtcdUnavailable:
            source.close()
            raise
        self._topology_source = source
        if not source.loaded:
            log.warning(
                "shard %s cannot read the topology from etcd yet (%s): it takes no session "
                "over until it can (such calls are refused and clients retry them), so no "
                "data is at risk; check that etcd is reachable",
                self.shard_id,
                source.last_error,
            )

    def _stop_sessions(self) -> None:
        LIVE_SHARDS.discard(self)  # a stopped shard reports no gauges
        source, self._topology_source = self._topology_source, None
        if source is not None:
            source.close()
        etcd, self._session_etcd = self._session_etcd, None
        if etcd is not None:
            etcd.close()
        self._sessions.topology_changed()
        for close in (self._sessions.close, self._answers.close):
            close()
        owned, self._owned_store = self._owned_store, None
        if hasattr(owned, "close"):
            owned.close()

    def _topology_unreachable(self, exc: EtcdUnavailable) -> EtcdUnavailable:
        """The error ``start()`` raises when the topology cannot be followed (both shells)."""
        return EtcdUnavailable(
            f"shard {self.shard_id} could not follow its service's topology in etcd "
            f"at {', '.join(self._config.etcd or ())}: {exc}. start() fails fast; pass "
            "wait_for_etcd=True (shardroute serve: --wait-for-etcd) to serve anyway"
        )

    def _warn_closed_control(self) -> None:
        """At start: a shard reachable from other machines whose control service has no
        credentials configured admits only local callers; say so."""
        config = self._config
        open_to_all = config.control_auth is None or not config.control_auth.configured
        if open_to_all and not config.loopback_only:
            log.warning(
                "shard %s listens on %s but its control service has no control token or "
                "mTLS identities configured, so it refuses remote callers (movers, drains "
                "and the CLI on other machines); no data is at risk; to drain or move its "
                "sessions from elsewhere, configure control_auth (docs/security.md)",
                self.shard_id,
                config.host,
            )

    def _migrate_held_sessions(self, deadline: float) -> tuple[int, int]:
        """Move every held session to other shards (drain), at most
        ``max_concurrent_moves`` at once; returns (moved, left behind), records
        :attr:`last_drain` and logs one summary line. Blocking."""
        from shardroute.sessions.migrator import Migrator

        keys = self._sessions.keys()
        source, etcd = self._topology_source, self._session_etcd
        if not keys or source is None or etcd is None or not self.migrate_on_drain:
            why = "moves were turned off for this drain" if keys else ""
            if keys and self.migrate_on_drain:
                why = "the shard does not follow the topology in etcd"
            self.last_drain = not_moved_summary(self.shard_id, keys, why, self._sessions.store)
            return 0, len(keys)
        # Each shard call: at most 10 s, never past the drain's deadline; no move starts
        # after it (a session left is taken over from the store at its next turn).
        timeout = max(1.0, min(10.0, deadline - time.monotonic()))
        auth = self._config.control_auth
        with (
            Migrator(
                etcd,
                self.service,
                source,
                store=self._sessions.store,
                timeout=timeout,
                tls=self._config.peer_tls,
                control_token=auth.token if auth is not None else None,
                telemetry=self.telemetry,
            ) as mover,
            drain_span(self.telemetry, self.shard_id, len(keys)),
        ):
            summary = move_all(
                self.shard_id,
                keys,
                lambda todo: mover.migrate_many(
                    todo,
                    max_concurrent=self.max_concurrent_moves,
                    deadline=deadline,
                    held_by=self.shard_id,  # what it holds: no read of the state for its owner
                ),
                lambda: mover.peak_concurrent,
                self._sessions.store,
            )
        self.last_drain = summary
        return summary.moved, summary.left_behind
