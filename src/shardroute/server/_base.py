"""What the sync and asyncio shard servers share: configuration, hooks, status, control.

The control service's answers are built here as plain functions of the server's state;
the two shells only wrap them in a sync or an async handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import grpc

from shardroute import metadata
from shardroute._proto import shard_pb2
from shardroute.errors import ServerLifecycleError
from shardroute.model import LoadReport
from shardroute.server._core import (
    CONTROL_SERVICE,
    DEFAULT_MAX_MESSAGE_BYTES,
    Lifecycle,
    LoadAccounting,
    ServerConfig,
    ServerState,
    SessionSummary,
)

__all__ = ["ServerLifecycleError", "ShardServerBase", "session_key"]

_LIST_PAGE_DEFAULT = 500
_LIST_PAGE_MAX = 5000

UNIMPLEMENTED_SESSION_CALL = (
    "shardroute: {method} is part of session migration, which this shard does not "
    "implement yet (see docs/server.md, 'Migration hooks')"
)


class _HasInvocationMetadata(Protocol):
    def invocation_metadata(self) -> Any: ...


def session_key(context: _HasInvocationMetadata) -> str | None:
    """The session key of the current call (:data:`shardroute.metadata.SESSION_KEY`
    request metadata), or None when the caller sent none.

    Works with the sync ``grpc.ServicerContext`` and ``grpc.aio.ServicerContext``.
    """
    md: Iterable[tuple[str, str | bytes]] | None = context.invocation_metadata()
    return metadata.get(md, metadata.SESSION_KEY)


_PROTO_STATE = {
    ServerState.SERVING: shard_pb2.SHARD_STATE_ACTIVE,
    ServerState.DRAINING: shard_pb2.SHARD_STATE_DRAINING,
}


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
        etcd: str | Sequence[str] | None,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_address: str | None = None,
        zone: str = "",
        region: str = "",
        weight: float = 1.0,
        capacity: int = 64,
        labels: Mapping[str, str] | None = None,
        lease_ttl_s: int = 5,
        drain_grace_s: float = 10.0,
        max_workers: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        etcd_timeout_s: float = 5.0,
        etcd_ca_cert: str | None = None,
        etcd_cert_key: str | None = None,
        etcd_cert_cert: str | None = None,
        etcd_user: str | None = None,
        etcd_password: str | None = None,
        wait_for_etcd: bool = False,
    ) -> None:
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
        )
        self._accounting = LoadAccounting()
        self._lifecycle = Lifecycle()
        self._bound_port = 0
        self._address = ""
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
        """``host:port`` clients reach this shard at (written in its etcd record);
        empty before ``start()``."""
        return self._address

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
        thread-safe and cheap. Default: none.
        """
        return ()

    def session_count(self) -> int:
        """How many sessions this shard holds (the ``sessions`` of its load report).

        Called about five times a second by the registrar thread; override it with
        something cheaper than ``len(self.list_sessions())`` when you can.
        """
        return len(self.list_sessions())

    # -- control service answers ----------------------------------------------------

    def _status(self) -> shard_pb2.GetStatusResponse:
        report = self.load()
        return shard_pb2.GetStatusResponse(
            shard_id=self.shard_id,
            service=self.service,
            address=self._address,
            zone=self._config.zone,
            region=self._config.region,
            capacity=self._config.capacity,
            state=_PROTO_STATE.get(self.state, shard_pb2.SHARD_STATE_DOWN),
            load=shard_pb2.LoadReport(
                inflight=report.inflight,
                queue_depth=report.queue_depth,
                sessions=report.sessions,
                latency_ms_p50=report.latency_ms_p50,
                latency_ms_p95=report.latency_ms_p95,
                ts=report.ts,
            ),
        )

    def _sessions_page(self, request: shard_pb2.ListSessionsRequest) -> Any:
        sessions = sorted(self.list_sessions(), key=lambda s: s.session_key)
        size = min(request.page_size or _LIST_PAGE_DEFAULT, _LIST_PAGE_MAX)
        start = 0
        if request.page_token:
            # The token is the last key of the previous page: stable under inserts.
            start = next(
                (i for i, s in enumerate(sessions) if s.session_key > request.page_token),
                len(sessions),
            )
        page = sessions[start : start + size]
        more = start + size < len(sessions)
        return shard_pb2.ListSessionsResponse(
            sessions=[
                shard_pb2.SessionInfo(
                    session_key=s.session_key,
                    epoch=0,
                    state_bytes=s.state_bytes,
                    last_used_ts=s.last_used_ts,
                )
                for s in page
            ],
            next_page_token=page[-1].session_key if more and page else "",
        )


def control_handler(
    get_status: Callable[[Any, Any], Any],
    drain: Callable[[Any, Any], Any],
    list_sessions: Callable[[Any, Any], Any],
    unimplemented_unary: Callable[[str], Callable[[Any, Any], Any]],
    unimplemented_stream: Callable[[str], Callable[[Any, Any], Any]],
) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The ``ShardControl`` service as a generic handler, from sync or async behaviours."""
    pb = shard_pb2
    handlers: dict[str, grpc.RpcMethodHandler] = {  # type: ignore[type-arg]
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            get_status, pb.GetStatusRequest.FromString, pb.GetStatusResponse.SerializeToString
        ),
        "Drain": grpc.unary_unary_rpc_method_handler(
            drain, pb.DrainRequest.FromString, pb.DrainResponse.SerializeToString
        ),
        "ListSessions": grpc.unary_unary_rpc_method_handler(
            list_sessions,
            pb.ListSessionsRequest.FromString,
            pb.ListSessionsResponse.SerializeToString,
        ),
        "ExportSession": grpc.unary_stream_rpc_method_handler(
            unimplemented_stream("ExportSession"),
            pb.ExportSessionRequest.FromString,
            pb.SessionChunk.SerializeToString,
        ),
        "ImportSession": grpc.stream_unary_rpc_method_handler(
            unimplemented_unary("ImportSession"),
            pb.SessionChunk.FromString,
            pb.ImportSessionResponse.SerializeToString,
        ),
        "WarmSession": grpc.unary_unary_rpc_method_handler(
            unimplemented_unary("WarmSession"),
            pb.WarmSessionRequest.FromString,
            pb.WarmSessionResponse.SerializeToString,
        ),
        "ReleaseSession": grpc.unary_unary_rpc_method_handler(
            unimplemented_unary("ReleaseSession"),
            pb.ReleaseSessionRequest.FromString,
            pb.ReleaseSessionResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(CONTROL_SERVICE, handlers)
