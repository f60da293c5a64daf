"""The ``ShardControl`` service of a shard (docs/protocol.md): the answers, shared by
both shells, and the generic handler that serves them.

:class:`ControlAnswers` holds the blocking logic of every call (the asyncio shell runs
it in a thread); the shells only translate :class:`~shardroute.errors.Refused` into a
gRPC status.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from shardroute import metadata
from shardroute._proto import shard_pb2
from shardroute.errors import ChunkError, ConfigError, Refused
from shardroute.server._push import Pusher
from shardroute.server.config import CONTROL_SERVICE
from shardroute.server.drain import in_process
from shardroute.server.lifecycle import ServerState
from shardroute.sessions.chunks import (
    MIN_CHUNK_BYTES,
    ChunkAssembler,
    chunk_size,
    split_chunks,
)
from shardroute.sessions.handoff import import_stored_version, import_version, rpc_deadline
from shardroute.sessions.migrator import MAX_CONCURRENT_MOVES

if TYPE_CHECKING:
    from shardroute.server._base import ShardServerBase

__all__ = ["ControlAnswers", "chunk_refusal", "control_handler"]

_LIST_PAGE_DEFAULT = 500
_LIST_PAGE_MAX = 5000

_PROTO_STATE = {
    ServerState.SERVING: shard_pb2.SHARD_STATE_ACTIVE,
    ServerState.DRAINING: shard_pb2.SHARD_STATE_DRAINING,
}


REPLY_GRACE_S = 1.0
"""How long a stopping shard lets a Drain reply reach its caller (see
:meth:`ControlAnswers.replies_pending`)."""


class ControlAnswers:
    """What a shard answers to each ``ShardControl`` call (blocking; no gRPC context)."""

    def __init__(self, server: ShardServerBase) -> None:
        self._server = server
        self._pusher = Pusher(server)
        self._lock = threading.Lock()
        self._answering = 0  # Drain calls in progress (answering())
        self._replied_at = -math.inf  # when the last one returned (monotonic)

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Around a whole Drain call (from before the drain begins to the reply): the
        stop waits for its reply (:meth:`replies_pending`)."""
        with self._lock:
            self._answering += 1
        try:
            yield
        finally:
            with self._lock:
                self._answering -= 1
                self._replied_at = time.monotonic()

    def replies_pending(self) -> bool:
        """Whether a Drain call's reply may still be on its way out: a call is answering
        and the drain's moves ended (its counts are ready), or one answered less than
        :data:`REPLY_GRACE_S` ago. The stop then gives control calls that long instead
        of cancelling them at once, so ``shardroute drain`` gets its counts rather than
        "Cancelling all calls". A Drain call still waiting for moves holds nothing."""
        ended = self._server._moves_ended.is_set()
        with self._lock:
            return (self._answering > 0 and ended) or (
                time.monotonic() - self._replied_at < REPLY_GRACE_S
            )

    def close(self) -> None:
        """Close the channels pushes opened to other shards."""
        self._pusher.close()

    def export_chunks(
        self, request: shard_pb2.ExportSessionRequest, time_remaining: float | None = None
    ) -> list[Any]:
        """``time_remaining``: the RPC's (``context.time_remaining()``); the export's wait
        for the in-flight turn ends before it (:data:`rpc_deadline`)."""
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        self._server.sessions.verify_move(request.session_key, request.epoch, "export")
        token = rpc_deadline.set(deadline)
        try:
            data = self._server.export_session(request.session_key, request.epoch)
        finally:
            rpc_deadline.reset(token)
        requested = max(request.chunk_bytes, MIN_CHUNK_BYTES) if request.chunk_bytes else 0
        size = chunk_size(requested, self._server.config.max_message_bytes)
        version = self._server.sessions.exported_version(request.session_key)
        return list(split_chunks(request.session_key, request.epoch, data, size, version))

    def export_answer(
        self, request: shard_pb2.ExportSessionRequest, time_remaining: float | None = None
    ) -> list[Any]:
        """What ``ExportSession`` answers: :meth:`export_chunks`, or, when the request
        names ``push_to`` and this shard imported them there itself, one chunk saying
        ``pushed`` (docs/protocol.md)."""
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        chunks = self.export_chunks(request, time_remaining)
        if not request.push_to:
            return chunks
        pushed = self._pusher.push(request, chunks, deadline)
        return chunks if pushed is None else [pushed]

    def import_assembled(self, assembler: ChunkAssembler) -> shard_pb2.ImportSessionResponse:
        if not assembler.done:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, "the transfer ended before its last chunk"
            )
        key, epoch, claimed = assembler.session_key, assembler.epoch, assembler.state_version
        # The fence check and the store's version, read at the same time.
        stored = self._server.sessions.check_import(key, epoch, claimed)
        data = assembler.data
        token = import_version.set(claimed)
        read = import_stored_version.set(stored)
        try:
            self._server.import_session(key, epoch, data)
        finally:
            import_stored_version.reset(read)
            import_version.reset(token)
        if assembler.warm:
            # WarmSession's step, in this call: the fence verify_move just read for the
            # import ({epoch, moving_to: this shard}) is the one a warm needs.
            self._warm(key, epoch)
        return shard_pb2.ImportSessionResponse(
            session_key=key, epoch=epoch, state_bytes=len(data), warmed=assembler.warm
        )

    def new_assembler(self) -> ChunkAssembler:
        return ChunkAssembler(self._server.sessions.max_state_bytes)

    def warm(self, request: shard_pb2.WarmSessionRequest) -> shard_pb2.WarmSessionResponse:
        self._server.sessions.verify_move(request.session_key, request.epoch, "warm")
        self._warm(request.session_key, request.epoch)
        return shard_pb2.WarmSessionResponse(warmed=True)

    def _warm(self, session_key: str, epoch: int) -> None:
        if not self._server.sessions.warm(session_key, epoch):
            raise Refused(grpc.StatusCode.NOT_FOUND, f"session {session_key!r} is not held here")

    def release(self, request: shard_pb2.ReleaseSessionRequest) -> shard_pb2.ReleaseSessionResponse:
        self._server.sessions.verify_move(
            request.session_key, request.epoch, "release", request.new_owner
        )
        released = self._server.release_session(
            request.session_key, request.epoch, request.new_owner
        )
        return shard_pb2.ReleaseSessionResponse(released=released)

    def end_session(self, request: Any, invocation: Any) -> shard_pb2.EndSessionResponse:
        try:
            key = request.session_key or metadata.get_session_key(invocation) or ""
            if not key:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "EndSession needs a session key (field or x-shardroute-session metadata)",
                )
            ended = self._server.sessions.end_session(
                key, metadata.get(invocation, metadata.REASON)
            )
        except ConfigError as exc:  # an invalid key
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        return shard_pb2.EndSessionResponse(ended=ended)

    def status(self) -> shard_pb2.GetStatusResponse:
        report = self._server.load()
        return shard_pb2.GetStatusResponse(
            shard_id=self._server.shard_id,
            service=self._server.service,
            address=self._server.address,
            zone=self._server.config.zone,
            region=self._server.config.region,
            capacity=self._server.config.capacity,
            state=_PROTO_STATE.get(self._server.state, shard_pb2.SHARD_STATE_DOWN),
            load=shard_pb2.LoadReport(
                inflight=report.inflight,
                queue_depth=report.queue_depth,
                sessions=report.sessions,
                latency_ms_p50=report.latency_ms_p50,
                latency_ms_p95=report.latency_ms_p95,
                ts=report.ts,
            ),
            checkpoints=self._server.sessions.checkpoints_total,
            store_bytes_written=self._server.sessions.store_bytes_written,
            sessions_ended=self._server.sessions.ended_total,
        )

    def take_drain_request(self, request: shard_pb2.DrainRequest) -> None:
        """Apply a Drain RPC's options: whether to move sessions, and the cap on moves."""
        server = self._server
        server.migrate_on_drain = request.migrate_sessions
        if request.max_concurrent_moves > 0:
            server.max_concurrent_moves = min(request.max_concurrent_moves, MAX_CONCURRENT_MOVES)

    def drain_reply(
        self, request: shard_pb2.DrainRequest, time_remaining: float | None
    ) -> shard_pb2.DrainResponse:
        """The Drain answer, once the drain began: with ``wait_for_moves``, waits (until
        1 s before the call's deadline, ``time_remaining``) for its session moves to
        end; the counts are filled when they ended (``moves_counted``)."""
        server = self._server
        ended = server._moves_ended
        if request.wait_for_moves:  # answer a little before the caller's deadline
            ended.wait(None if time_remaining is None else max(0.0, time_remaining - 1.0))
        summary = server.last_drain
        if not ended.is_set() or summary is None:
            return shard_pb2.DrainResponse(state=shard_pb2.SHARD_STATE_DRAINING)
        return shard_pb2.DrainResponse(
            state=shard_pb2.SHARD_STATE_DRAINING,
            sessions_moved=summary.moved,
            sessions_failed=summary.failed,
            sessions_not_moved=summary.not_moved,
            sessions_held=summary.held,
            moves_s=summary.duration_s,
            moves_counted=True,
            store_in_process=in_process(server._sessions.store),
        )

    def sessions_page(self, request: shard_pb2.ListSessionsRequest) -> Any:
        sessions = sorted(self._server.list_sessions(), key=lambda s: s.session_key)
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
                    epoch=self._server.sessions.epoch(s.session_key),
                    state_bytes=s.state_bytes,
                    last_used_ts=s.last_used_ts,
                )
                for s in page
            ],
            next_page_token=page[-1].session_key if more and page else "",
        )


def chunk_refusal(error: ChunkError) -> Refused:
    """How a malformed transfer is answered: DATA_LOSS for a CRC-32 mismatch,
    INVALID_ARGUMENT otherwise."""
    code = grpc.StatusCode.DATA_LOSS if error.corrupt else grpc.StatusCode.INVALID_ARGUMENT
    return Refused(code, f"ImportSession refused: {error}")


def control_handler(
    get_status: Callable[[Any, Any], Any],
    drain: Callable[[Any, Any], Any],
    list_sessions: Callable[[Any, Any], Any],
    export_session: Callable[[Any, Any], Any],
    import_session: Callable[[Any, Any], Any],
    warm_session: Callable[[Any, Any], Any],
    release_session: Callable[[Any, Any], Any],
    end_session: Callable[[Any, Any], Any],
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
            export_session,
            pb.ExportSessionRequest.FromString,
            pb.SessionChunk.SerializeToString,
        ),
        "ImportSession": grpc.stream_unary_rpc_method_handler(
            import_session,
            pb.SessionChunk.FromString,
            pb.ImportSessionResponse.SerializeToString,
        ),
        "WarmSession": grpc.unary_unary_rpc_method_handler(
            warm_session,
            pb.WarmSessionRequest.FromString,
            pb.WarmSessionResponse.SerializeToString,
        ),
        "ReleaseSession": grpc.unary_unary_rpc_method_handler(
            release_session,
            pb.ReleaseSessionRequest.FromString,
            pb.ReleaseSessionResponse.SerializeToString,
        ),
        "EndSession": grpc.unary_unary_rpc_method_handler(
            end_session,
            pb.EndSessionRequest.FromString,
            pb.EndSessionResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(CONTROL_SERVICE, handlers)
