"""The clients' common shell: what :class:`~shardroute.ShardClient` and
:class:`~shardroute.AsyncShardClient` expose over their :class:`~shardroute._core.ClientCore`
(the source, the router, ejection state, stats, ``route``, ``stub``, the session mover),
and :class:`RoutedStub`, a generated stub whose methods route by session key.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shardroute._core import DEFAULT_MAX_MESSAGE_BYTES, CallLoop, ClientCore
from shardroute.discovery.source import TopologySource
from shardroute.errors import ConfigError, UnknownMethod
from shardroute.model import Shard
from shardroute.routing import Decision, Router
from shardroute.security import ChannelMaker, ChannelSecurity, ControlToken
from shardroute.session_keys import check_session_key
from shardroute.telemetry import Telemetry
from shardroute.transport import InFlight, MethodSpec, OutlierDetector, RetryPolicy, describe_stub
from shardroute.transport.health import HealthChecks
from shardroute.transport.inflight import LOCK_FREE
from shardroute.transport.loadboard import LoadBoard
from shardroute.transport.stats import CallStats

if TYPE_CHECKING:
    from shardroute.sessions.migrator import Migrator

__all__ = ["ClientShell", "RoutedStub"]


class RoutedStub:
    """A generated stub whose methods route by session key.

    ``stub.Method(request, session_key=..., timeout=None, priority="standard",
    idempotent=False, metadata=())`` calls ``Method`` on the shard that serves the
    session. Unary methods return the response; server-streaming methods return an
    iterator (an async iterator for the asyncio client) of responses.
    """

    def __init__(self, stub_class: type[Any], call: Callable[[MethodSpec], Any]) -> None:
        self._stub_class = stub_class
        self._methods = describe_stub(stub_class)
        self._call = call
        self._bound: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        bound = self._bound.get(name)
        if bound is None:
            spec = self._methods.get(name)
            if spec is None:
                known = ", ".join(sorted(self._methods))
                raise UnknownMethod(
                    f"{self._stub_class.__name__} has no method {name!r} (it has: {known})"
                )
            if spec.kind not in ("unary_unary", "unary_stream"):
                raise UnknownMethod(
                    f"{spec.path} is {spec.kind.replace('_', '-')}: shardroute routes "
                    "unary-unary and unary-stream methods"
                )
            bound = self._bound[name] = self._call(spec)
            # found as a plain attribute from now on: no __getattr__ (and no
            # AttributeError raised and caught inside Python) on the per-call path
            object.__setattr__(self, name, bound)
        return bound

    def __dir__(self) -> list[str]:
        return sorted(self._methods)


class ClientShell(abc.ABC):
    """What both clients expose over their :class:`ClientCore`: the topology source,
    the router, ejection state, call stats, ``route`` and ``stub``. Subclasses add the
    call loops (``_unary`` and ``_stream``, with or without ``await``)."""

    _core: ClientCore[Any]

    def __init__(
        self,
        source: TopologySource,
        *,
        zone: str | None = None,
        region: str | None = None,
        timeout: float = 30.0,
        router: Router | None = None,
        retry: RetryPolicy | None = None,
        outlier: OutlierDetector | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
        telemetry: Telemetry | None = None,
        tls: ChannelSecurity = None,
        control_token: ControlToken | None = None,
        session_store: Any = None,
        health_checks: HealthChecks | None = None,
    ) -> None:
        from shardroute.sessions.store_url import check_store_choice

        self._session_store = check_store_choice(session_store)  # for migrate()
        self._channel_maker = ChannelMaker(tls)
        self._control_token = control_token
        self._core = ClientCore(
            source,
            zone=zone,
            region=region,
            timeout=timeout,
            router=router,
            retry=retry,
            outlier=outlier,
            max_message_bytes=max_message_bytes,
            channel_options=channel_options,
            create_channel=self._create_channel,
            close_channel=self._close_channel,
            telemetry=telemetry,
            health_checks=health_checks,
            create_check_channel=self._channel_maker.sync_channel,
        )
        self._owned_source: TopologySource | None = None

    @abc.abstractmethod
    def _create_channel(self, shard: Shard, options: list[tuple[str, Any]]) -> Any:
        """A channel to ``shard`` (sync or asyncio; TLS as configured)."""

    @abc.abstractmethod
    def _close_channel(self, channel: Any) -> None:
        """Close a channel of a shard that left."""

    @property
    def source(self) -> TopologySource:
        """Where the topology comes from."""
        return self._core.source

    @property
    def router(self) -> Router:
        """The router (its policy and affinity memo)."""
        return self._core.router

    @property
    def inflight(self) -> InFlight:
        """This client's calls in flight per shard (a load input of the router)."""
        return self._core.inflight

    @property
    def load_board(self) -> LoadBoard:
        """The loads this client routes on: each shard's etcd report or the load it
        attached to its latest response, whichever is freshest, once neither is older
        than ``RoutingPolicy.max_report_age_s`` (``heard_loads()``: the trailers;
        ``routing_view``: the snapshot routed on)."""
        return self._core.loads

    @property
    def outlier(self) -> OutlierDetector:
        """Passive outlier ejection state."""
        return self._core.outlier

    @property
    def stats(self) -> CallStats:
        """Counters of this client's calls (by routing reason, failovers, redirects,
        errors)."""
        return self._core.stats

    def route(self, session_key: str, priority: str = "standard") -> Decision:
        """Where a request of ``session_key`` would go now (no I/O)."""
        return self._core.route(session_key, priority)

    def stub(self, stub_class: type[Any]) -> RoutedStub:
        """Wrap a generated stub class; its methods take ``session_key=`` and route."""
        loops = (self._unary, self._stream, self._recorded_unary, self._recorded_stream)
        core = self._core

        def bind(spec: MethodSpec) -> Callable[..., Any]:
            if spec.kind == "unary_unary" and LOCK_FREE:
                return self._bind_unary(spec)  # the flat path (transport._async_calls)
            return core.bind(spec, loops)

        return RoutedStub(stub_class, bind)

    _migrator: Migrator | None = None

    def _mover(self) -> Migrator:
        """The client's session mover (made on first use; needs an etcd source)."""
        if self._migrator is None:
            from shardroute.discovery.etcd import EtcdTopologySource
            from shardroute.etcd import EtcdClient
            from shardroute.sessions.migrator import Migrator

            source = self._core.source
            if not isinstance(source, EtcdTopologySource):
                raise ConfigError("migrate() needs a client on an EtcdTopologySource")
            store = self._session_store
            if isinstance(store, str):  # the shards' store: "etcd" (None), a Redis URL
                from shardroute.sessions.store_url import open_session_store

                store = open_session_store(store, service=source.service)
            self._migrator = Migrator(
                EtcdClient(source.options),
                source.service,
                source,
                router=self._core.router,
                loads=self._core.inflight,
                routing_view=self._core.current,
                telemetry=self._core.telemetry,
                close_etcd=True,
                tls=self._channel_maker.security,
                control_token=self._control_token,
                store=store,
            )
        return self._migrator

    def _close_mover(self) -> None:
        migrator, self._migrator = self._migrator, None
        if migrator is not None:
            migrator.close()
            if isinstance(self._session_store, str) and hasattr(migrator.store, "close"):
                migrator.store.close()  # made here from a URL

    def _end_session_call(self, session_key: str, timeout: float | None) -> Any:
        """``ShardControl.EndSession`` for ``session_key``, routed like a turn (a result,
        or an awaitable of one in the asyncio client)."""
        from shardroute._proto import shard_pb2, shard_pb2_grpc

        check_session_key(session_key)
        stub = self.stub(shard_pb2_grpc.ShardControlStub)
        request = shard_pb2.EndSessionRequest(session_key=session_key)
        return stub.EndSession(request, session_key=session_key, timeout=timeout, idempotent=True)

    # The call loops (a :data:`CallLoop` each), written in the shells with or without
    # ``await``: ``_unary`` returns the response, ``_stream`` an iterator of them.
    _unary: CallLoop
    _stream: CallLoop
    _recorded_unary: CallLoop
    _recorded_stream: CallLoop
    _bind_unary: Callable[[MethodSpec], Callable[..., Any]]
    """The routed callable of a unary method, flat (:class:`~shardroute.transport.
    _async_calls.AsyncCallLoops`); the other shapes go through ``ClientCore.bind``."""
