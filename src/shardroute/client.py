"""ShardClient: route calls of a user's generated gRPC stub to shards, from threads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from shardroute._core import CallOptions, ClientShell
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdClient
from shardroute.routing import Decision
from shardroute.transport import Attempts, MethodSpec
from shardroute.transport.attempts import Metadata

if TYPE_CHECKING:
    from shardroute.migration import MigrationResult, Migrator

__all__ = ["ShardClient"]


class ShardClient(ClientShell):
    """Calls shards of one service directly, choosing the shard per session in-process.

    Build it from any :class:`~shardroute.discovery.source.TopologySource`, or with
    :meth:`connect` from etcd endpoints. Then wrap a generated stub class::

        client = ShardClient.connect("127.0.0.1:2379", "chat", zone="eu-1a")
        chat = client.stub(chat_pb2_grpc.ChatStub)
        reply = chat.History(request, session_key="conv-42", idempotent=True)
        for token in chat.Generate(request, session_key="conv-42"):
            ...

    Failover: an attempt that fails before reaching its shard (no connection) moves to
    the decision's next fallback; one that may have executed moves on only when the
    call is marked ``idempotent``; a stream moves on only before its first message.
    At most ``retry.max_attempts`` shards per call, within the call's deadline. A shard
    that cannot be connected to is ejected at once (for this client), one that breaks
    ``outlier.consecutive_failures`` calls in a row too, with growing backoff.

    Thread contract: one client is shared by all threads. ``close()`` is idempotent;
    the client closes a source it created itself (``connect``), not one it was given.

    Constructor: ``ShardClient(source, *, zone=None, region=None, timeout=30.0,
    router=None, retry=None, outlier=None, max_message_bytes=4 MiB,
    channel_options=())`` (docs/client.md).
    """

    _migrator: Migrator | None = None

    def _create_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        return grpc.insecure_channel(address, options)

    def _close_channel(self, channel: grpc.Channel) -> None:
        channel.close()

    @classmethod
    def connect(
        cls,
        etcd: str | Sequence[str],
        service: str,
        *,
        etcd_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ShardClient:
        """A client following ``service`` in etcd (the source is started and owned).

        ``etcd_options`` go to :class:`~shardroute.discovery.etcd.EtcdTopologySource`
        (timeout, TLS files, user/password); ``kwargs`` to the constructor.
        """
        source = EtcdTopologySource(etcd, service, **(etcd_options or {}))
        source.start()
        try:
            client = cls(source, **kwargs)
        except BaseException:
            source.close()
            raise
        client._owned_source = source
        return client

    def migrate(self, session_key: str, target: str | None = None) -> MigrationResult:
        """Move a session to ``target`` (or the router's choice) without losing a turn;
        this client then sends the session there (docs/migration.md).

        Needs an etcd-backed topology source. Raises ``MigrationConflict``,
        ``MigrationFailed`` (rolled back), ``UnknownShard`` or ``EtcdUnavailable``.
        """
        if self._migrator is None:
            from shardroute.migration import Migrator

            source = self._core.source
            if not isinstance(source, EtcdTopologySource):
                raise ConfigError("migrate() needs a client on an EtcdTopologySource")
            self._migrator = Migrator(
                EtcdClient(source.options),
                source.service,
                source,
                router=self._core.router,
                close_etcd=True,
            )
        return self._migrator.migrate(session_key, target=target)

    def end_session(self, session_key: str, *, timeout: float | None = None) -> bool:
        """End a conversation: the shard that owns it deletes its stored state and its
        override and forgets it (``ShardControl.EndSession``, routed and redirected like
        a turn, retried as idempotent). Returns False when it had no stored state
        (unknown, already ended or expired). A later call with the same key starts a new
        session. Raises the call errors of :meth:`stub` methods (docs/client.md)."""
        return bool(self._end_session_call(session_key, timeout).ended)

    def _unary(
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
                response = method(request, timeout=timeout, metadata=md)
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

    def _stream(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> Iterator[Any]:
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
                for message in call:
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

    def close(self) -> None:
        """Close channels (and the source if this client created it). Idempotent."""
        self._core.close()
        if self._migrator is not None:
            self._migrator.close()
        if self._owned_source is not None:
            self._owned_source.close()

    def __enter__(self) -> ShardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
