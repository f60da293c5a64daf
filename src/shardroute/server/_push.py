"""A source shard's push (``ExportSessionRequest.push_to``, docs/migration.md): it imports
the exported state into the move's target itself, so the bytes cross once instead of
through the mover. With the shard's peer credentials (``peer_tls``, its control token),
to a shard of its own topology, never to one its watch shows another fence for (the
target checks the import's fence itself). Any failure leaves the export as it was: the
chunks go to the mover, which imports them."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import grpc

from shardroute._proto import shard_pb2
from shardroute.errors import ShardRouteError
from shardroute.sessions._shard_calls import Exported, ShardCalls
from shardroute.sessions.chunks import DEFAULT_CHUNK_BYTES

if TYPE_CHECKING:
    from shardroute.server._base import ShardServerBase

__all__ = ["Pusher"]

log = logging.getLogger("shardroute.server")

_PUSH_TIMEOUT_S = 30.0
"""A push's deadline when the export call has none."""


class Pusher:
    """Pushes of one shard (thread-safe; channels opened on first use)."""

    def __init__(self, server: ShardServerBase) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._calls: ShardCalls | None = None
        self._closed = False

    def push(self, request: Any, chunks: list[Any], deadline: float | None) -> Any | None:
        """Import ``chunks`` into ``request.push_to`` before ``deadline`` (monotonic); the
        answer chunk (``pushed``), or None when not pushed (the caller streams the chunks
        to the mover)."""
        key, epoch, target_id = request.session_key, request.epoch, request.push_to
        # The export checked the fence. Where it moves the session to, as the watch shows
        # it (no read: the target checks the import's fence itself, and refuses one that
        # does not move the session to it).
        moving_to = self._server.sessions.watched_move(key, epoch)
        topology = self._server.topology
        target = topology.shards.get(target_id) if topology is not None else None
        if moving_to not in (None, target_id) or target is None:
            log.warning(
                "shard %s: export of session %s not pushed to %r: the fence moves it to "
                "%r (or that shard is not in this shard's topology); the mover imports it "
                "instead: nothing is lost, nothing to do",
                self._server.shard_id,
                key,
                target_id,
                moving_to,
            )
            return None
        calls = self._shard_calls()
        if calls is None:
            return None
        last = chunks[-1]
        timeout = _PUSH_TIMEOUT_S if deadline is None else deadline - time.monotonic()
        try:
            if timeout <= 0:
                raise ShardRouteError("no time left before the export's deadline")
            state = Exported(b"", last.state_version, chunks)
            calls.import_warm(key, epoch, target, state, None, timeout=timeout)
        except (grpc.RpcError, ShardRouteError) as exc:
            log.warning(
                "shard %s: push of session %s to %s failed (%s); nothing is lost: the "
                "state goes to the mover, which imports it (if that shard refuses this "
                "one's control calls, admit the shards' identity or token: "
                "docs/security.md)",
                self._server.shard_id,
                key,
                target_id,
                exc.details() if isinstance(exc, grpc.RpcError) else exc,
            )
            return None
        return shard_pb2.SessionChunk(
            session_key=key,
            epoch=epoch,
            total_bytes=last.total_bytes,
            last=True,
            state_version=last.state_version,
            pushed=True,
        )

    def _shard_calls(self) -> ShardCalls | None:
        with self._lock:
            if self._calls is None and not self._closed:
                auth = self._server.config.control_auth
                self._calls = ShardCalls(
                    timeout=_PUSH_TIMEOUT_S,
                    chunk_bytes=DEFAULT_CHUNK_BYTES,
                    tls=self._server.config.peer_tls,
                    control_token=auth.token if auth is not None else None,
                )
            return self._calls

    def close(self) -> None:
        """Close the channels to other shards. Idempotent."""
        with self._lock:
            calls, self._calls = self._calls, None
            self._closed = True
        if calls is not None:
            calls.close()
