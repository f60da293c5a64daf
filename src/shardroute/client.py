"""ShardClient: route calls of a user's generated gRPC stub to shards, from threads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from shardroute._shell import ClientShell
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.model import Shard
from shardroute.transport._sync_calls import CallLoops

if TYPE_CHECKING:
    from shardroute.sessions.migrator import MigrationResult

__all__ = ["ShardClient"]


class ShardClient(CallLoops, ClientShell):
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
    channel_options=(), tls=None, control_token=None, telemetry=None, health_checks=None)``
    (docs/client.md; ``health_checks``: a :class:`~shardroute.HealthChecks` to check the
    shards this client uses between calls, off by default; ``tls``: a
    :class:`~shardroute.security.TLSConfig` or ``grpc.ChannelCredentials`` for every
    shard channel, docs/security.md; ``control_token``: what :meth:`migrate` sends to
    shards' control services; ``telemetry``: a :class:`~shardroute.telemetry.Telemetry`,
    where this client's spans and metrics go, docs/observability.md).
    """

    def _create_channel(self, shard: Shard, options: list[tuple[str, Any]]) -> grpc.Channel:
        return self._channel_maker.sync_channel(shard, options)

    def _close_channel(self, channel: grpc.Channel) -> None:
        channel.close()

    @classmethod
    def connect(
        cls,
        etcd: str | Sequence[str],
        service: str,
        *,
        etcd_options: dict[str, Any] | None = None,
        follow_overrides: bool = False,
        **kwargs: Any,
    ) -> ShardClient:
        """A client following ``service`` in etcd (the source is started and owned).

        ``etcd_options`` go to :class:`~shardroute.discovery.etcd.EtcdTopologySource`
        (timeout, TLS files, user/password); ``kwargs`` to the constructor (its
        ``telemetry`` to the source too: topology events).

        ``follow_overrides``: the source also reads the session overrides (the owner of
        each session that moved off its home: a spill, a failover, a migration), and the
        router sends such a session straight to its owner (reason ``override``) instead
        of home and a redirect. Every client that follows them agrees on where those
        sessions go. It costs a watch on the overrides' keys and their memory in every
        client (one entry per moved session); docs/routing.md, "Following overrides".
        """
        source_options = {"telemetry": kwargs.get("telemetry"), **(etcd_options or {})}
        if follow_overrides:
            source_options["include_sessions"] = True
        source = EtcdTopologySource(etcd, service, **source_options)
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
        return self._mover().migrate(session_key, target=target)

    def end_session(self, session_key: str, *, timeout: float | None = None) -> bool:
        """End a conversation: the shard that owns it deletes its stored state and its
        override and forgets it (``ShardControl.EndSession``, routed and redirected like
        a turn, retried as idempotent). Returns False when it had no stored state
        (unknown, already ended or expired). A later call with the same key starts a new
        session. Raises the call errors of :meth:`stub` methods (docs/client.md)."""
        return bool(self._end_session_call(session_key, timeout).ended)

    def close(self) -> None:
        """Close channels (and the source if this client created it). Idempotent."""
        self._core.close()
        self._close_mover()
        if self._owned_source is not None:
            self._owned_source.close()

    def __enter__(self) -> ShardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
