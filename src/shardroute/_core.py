"""What the sync and asyncio clients share: routing, topology following, stub reading.

Both clients are thin shells over this core and :class:`~shardroute.transport.Attempts`:
the routing decision, the failover rules and outlier ejection are written once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from shardroute.discovery.source import TopologySource
from shardroute.errors import ConfigError, UnknownMethod
from shardroute.model import Topology
from shardroute.routing import Decision, Router
from shardroute.transport import (
    Attempts,
    ChannelPool,
    InFlight,
    MethodSpec,
    OutlierDetector,
    RetryPolicy,
    describe_stub,
)
from shardroute.transport.attempts import CallRules
from shardroute.transport.stats import CallStats

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ClientCore", "ClientShell", "RoutedStub"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
C = TypeVar("C")


class ClientCore(Generic[C]):
    """Routing state of one client: source, router, ejection, retry rules, channels."""

    def __init__(
        self,
        source: TopologySource,
        *,
        zone: str | None,
        region: str | None,
        timeout: float,
        router: Router | None,
        retry: RetryPolicy | None,
        outlier: OutlierDetector | None,
        max_message_bytes: int,
        channel_options: Sequence[tuple[str, Any]],
        create_channel: Callable[[str, list[tuple[str, Any]]], C],
        close_channel: Callable[[C], None],
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if max_message_bytes <= 0:
            raise ConfigError(f"max_message_bytes must be > 0, got {max_message_bytes!r}")
        self.source = source
        self.zone = zone
        self.region = region
        self.timeout = timeout
        self.router = router if router is not None else Router()
        self.retry = retry if retry is not None else RetryPolicy()
        self.outlier = outlier if outlier is not None else OutlierDetector()
        self.stats = CallStats()
        self.inflight = InFlight()  # this client's calls per shard: the router's load input
        self.rules = CallRules(
            self.retry,
            self.outlier,
            self.router,
            self.stats,
            shards=lambda: source.current().shards,
        )
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *channel_options,
        ]
        self.channels: ChannelPool[C] = ChannelPool(
            lambda address: create_channel(address, options), close_channel
        )
        self._on_topology(source.current())
        self._unsubscribe = source.subscribe(self._on_topology)

    def _on_topology(self, topology: Topology) -> None:
        self.router.prepare(topology)  # build the ring here, off the request path
        self.inflight.rebase(self.router.basis(topology))
        for shard_id in self.channels.retain(topology):
            self.outlier.forget(shard_id)

    def route(self, session_key: str, priority: str = "standard") -> Decision:
        """The routing decision for a request of ``session_key`` now (no I/O)."""
        return self.router.route(
            session_key,
            self.source.current(),
            priority=priority,
            zone=self.zone,
            region=self.region,
            excluded=self.outlier.ejected(),
            loads=self.inflight,
        )

    def bind(
        self,
        spec: MethodSpec,
        unary: Callable[[MethodSpec, Any, str, Attempts], Any],
        stream: Callable[[MethodSpec, Any, str, Attempts], Any],
    ) -> Callable[..., Any]:
        """The routed callable of one method: routes, plans the attempts, then hands
        over to the shell's ``unary`` or ``stream`` loop (sync or asyncio)."""
        run = stream if spec.kind == "unary_stream" else unary

        router = self.router
        source = self.source
        outlier = self.outlier
        rules = self.rules
        inflight = self.inflight
        path = spec.path

        def call(
            request: Any,
            *,
            session_key: str,
            timeout: float | None = None,
            priority: str = "standard",
            idempotent: bool = False,
            metadata: Sequence[tuple[str, str]] = (),
        ) -> Any:
            # The per-call hot path: kept flat (see docs/benchmarks.md).
            if not session_key or not isinstance(session_key, str):
                raise ConfigError(f"session_key must be a non-empty string, got {session_key!r}")
            if timeout is None:
                timeout = self.timeout
            elif timeout <= 0:
                raise ConfigError(f"timeout must be > 0, got {timeout!r}")
            decision = router.route(
                session_key,
                source.current(),
                priority=priority,
                zone=self.zone,
                region=self.region,
                excluded=outlier.ejected(),
                loads=inflight,
            )
            attempts = Attempts(
                decision,
                session_key,
                path,
                priority,
                timeout,
                idempotent,
                rules,
                tuple(metadata) if metadata else (),
            )
            return run(spec, request, session_key, attempts)

        call.__name__ = spec.name
        call.__doc__ = f"Call {spec.path} on the shard serving ``session_key``."
        return call

    def close(self) -> None:
        """Stop following the topology and close channels."""
        self._unsubscribe()
        self.channels.close()


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
    ) -> None:
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
        )
        self._owned_source: TopologySource | None = None

    @abc.abstractmethod
    def _create_channel(self, address: str, options: list[tuple[str, Any]]) -> Any:
        """A channel to ``address`` (sync or asyncio)."""

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
        return RoutedStub(stub_class, lambda spec: self._core.bind(spec, self._unary, self._stream))

    def _end_session_call(self, session_key: str, timeout: float | None) -> Any:
        """``ShardControl.EndSession`` for ``session_key``, routed like a turn (a result,
        or an awaitable of one in the asyncio client)."""
        from shardroute._proto import shard_pb2, shard_pb2_grpc

        if not isinstance(session_key, str) or not session_key:
            raise ConfigError(f"end_session needs a non-empty session key, got {session_key!r}")
        stub = self.stub(shard_pb2_grpc.ShardControlStub)
        request = shard_pb2.EndSessionRequest(session_key=session_key)
        return stub.EndSession(request, session_key=session_key, timeout=timeout, idempotent=True)

    @abc.abstractmethod
    def _unary(self, spec: MethodSpec, request: Any, session_key: str, attempts: Attempts) -> Any:
        """The call loop of a unary method."""

    @abc.abstractmethod
    def _stream(self, spec: MethodSpec, request: Any, session_key: str, attempts: Attempts) -> Any:
        """The call loop of a server-streaming method."""
