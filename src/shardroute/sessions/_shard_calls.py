"""The mover's calls to shards' control services (docs/migration.md, "Migration"): export,
import (which warms in the same call), release, awaited or sent after a commit and
answered later, over one channel per shard with the mover's credentials and deadline."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace

from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.errors import MigrationFailed
from shardroute.model import Shard
from shardroute.security import ChannelMaker, ChannelSecurity, ControlToken
from shardroute.sessions.chunks import joined_export, split_chunks
from shardroute.telemetry import names
from shardroute.telemetry.migration import MigrationTrace
from shardroute.transport.channels import ChannelPool
from shardroute.transport.failures import rpc_brief

__all__ = ["Exported", "ShardCalls", "control_stub"]

log = logging.getLogger("shardroute.migration")


@dataclass(frozen=True, slots=True)
class Exported:
    """A session's state as a move carries it."""

    data: bytes
    version: int
    """The store version the bytes were saved at (0: unknown)."""
    chunks: list[Any] | None
    """The export's chunks, checked, forwarded to the target as they are (None: the
    state came from the store, or was pushed)."""
    pushed: int = -1
    """The state's size when the source imported it into the target itself (``push_to``:
    nothing left to import); -1 when not pushed."""

    @property
    def size(self) -> int:
        """The state's size in bytes."""
        return self.pushed if self.pushed >= 0 else len(self.data)


class ShardCalls:
    """A mover's control calls. Thread-safe; :meth:`close` waits for the releases still
    in flight, then closes the channels."""

    def __init__(
        self,
        *,
        timeout: float,
        chunk_bytes: int,
        tls: ChannelSecurity,
        control_token: ControlToken | None,
    ) -> None:
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        maker = ChannelMaker(tls)
        self._channels: ChannelPool[grpc.Channel] = ChannelPool(
            maker.sync_channel, lambda channel: channel.close()
        )
        token = control_token if control_token is not None else ControlToken.from_env()
        self._credentials = token.metadata() if token is not None else ()
        self._lock = threading.Lock()
        # Releases after a commit run here: handing one over costs ~20 µs, where a gRPC
        # future costs as much as the call itself (it starts a thread per call).
        self._release_pool = ThreadPoolExecutor(4, thread_name_prefix="shardroute-release")
        self._releases: dict[str, Future[None]] = {}
        """The releases sent after a commit and not yet answered, by session."""
        self.releases_failed = 0
        """Releases sent after a commit that the shard refused or did not answer."""

    def export(
        self,
        session_key: str,
        epoch: int,
        source: Shard,
        max_bytes: int,
        steps: MigrationTrace,
        push_to: str = "",
    ) -> Exported | None:
        """The source's export, checked (at most ``max_bytes``); None when the source is
        unreachable (the call was never sent: the caller reads the store). With
        ``push_to`` (the target's id) the source may import the state into the target
        itself: then :attr:`Exported.pushed` is its size and there is nothing to import."""
        request = shard_pb2.ExportSessionRequest(
            session_key=session_key, epoch=epoch, chunk_bytes=self.chunk_bytes, push_to=push_to
        )
        chunks = None
        try:
            with steps.step("export") as span:
                chunks = self.control(source).ExportSession(
                    request, timeout=self.timeout, metadata=self._credentials
                )
                stream = iter(chunks)
                first = next(stream, None)
                span.set_attribute(names.STEP_PUSHED, first is not None and first.pushed)
                if first is not None and first.pushed:
                    return _pushed(session_key, epoch, first, max_bytes)
                parts = stream if first is None else itertools.chain((first,), stream)
                received = joined_export(session_key, parts, max_bytes, epoch=epoch)
                return Exported(received.data, received.state_version, received.chunks)
        except grpc.RpcError as exc:
            if not _unreachable(exc):
                raise
            log.warning(
                "moving session %r: its shard %s does not answer, so the move takes its state "
                "from the session store (its last answered turn); no data is lost; nothing "
                "to do",
                session_key,
                source.id,
            )
            return None
        finally:
            if chunks is not None:
                chunks.cancel()  # no-op once finished; stops a stream we gave up on

    def import_warm(
        self,
        session_key: str,
        epoch: int,
        target: Shard,
        state: Exported,
        steps: MigrationTrace | None,
        timeout: float | None = None,
    ) -> None:
        """Import into ``target``, warming it in the same call; a shard that predates
        that (``warmed`` false) is sent ``WarmSession`` after it. ``steps``: None when a
        source pushes (``push_to``); ``timeout``: each call's, default the mover's."""
        steps = steps if steps is not None else _UNTRACED
        if state.pushed >= 0:  # the source did both: the steps, as empty spans
            with steps.step("import") as span:
                span.set_attribute(names.STEP_PUSHED, True)
            with steps.step("warm") as span:
                span.set_attribute(names.STEP_IN_IMPORT, True)
            return
        control = self.control(target)
        timeout = self.timeout if timeout is None else timeout
        chunks: Iterable[Any]
        if state.chunks is not None:
            chunks = state.chunks
            chunks[-1].warm = True
        else:
            chunks = split_chunks(
                session_key, epoch, state.data, self.chunk_bytes, state.version, warm=True
            )
        with steps.step("import"):
            reply = control.ImportSession(iter(chunks), timeout=timeout, metadata=self._credentials)
        with steps.step("warm") as span:
            span.set_attribute(names.STEP_IN_IMPORT, bool(reply.warmed))
            if not reply.warmed:
                control.WarmSession(
                    shard_pb2.WarmSessionRequest(session_key=session_key, epoch=epoch),
                    timeout=timeout,
                    metadata=self._credentials,
                )

    def release(self, shard: Shard, session_key: str, epoch: int, new_owner: str) -> bool:
        """``ReleaseSession``, awaited; a failure is logged (the shard learns from etcd)
        and answered False."""
        try:
            self.control(shard).ReleaseSession(
                _release_request(session_key, epoch, new_owner),
                timeout=self.timeout,
                metadata=self._credentials,
            )
            return True
        except grpc.RpcError as exc:
            log.warning(
                "session %r: release on %s failed (%s): that shard learns the session's "
                "owner from etcd instead; no data is lost; nothing to do",
                session_key,
                shard.id,
                rpc_brief(exc),
            )
            return False

    def release_later(self, shard: Shard, session_key: str, epoch: int, new_owner: str) -> None:
        """``ReleaseSession`` after a commit, not waited for: a failure is logged and
        counted when it comes (the commit stands, the shard learns it from etcd)."""

        def send() -> None:
            if not self.release(shard, session_key, epoch, new_owner):
                with self._lock:
                    self.releases_failed += 1

        sent = self._release_pool.submit(send)
        with self._lock:
            self._releases[session_key] = sent

        def forget(done: Future[None]) -> None:
            with self._lock:
                if self._releases.get(session_key) is done:
                    del self._releases[session_key]

        sent.add_done_callback(forget)

    def wait_released(self, session_key: str | None = None) -> None:
        """Wait for the releases sent by :meth:`release_later` (of ``session_key`` only,
        or all) to be answered and handled (each call has the ``timeout`` deadline)."""
        with self._lock:
            if session_key is None:
                pending = list(self._releases.values())
            else:
                one = self._releases.get(session_key)
                pending = [] if one is None else [one]
        wait(pending)

    def control(self, shard: Shard) -> Any:
        """A ``ShardControl`` stub on ``shard``'s channel."""
        return control_stub(self._channels.channel(shard))

    def retain(self, shards: Mapping[str, Shard]) -> None:
        """Close channels to shards not in ``shards`` (by id) or that moved address."""
        self._channels.retain(shards)

    def close(self) -> None:
        """Wait for the releases in flight, then close the channels. Idempotent."""
        self._release_pool.shutdown(wait=True)
        self._channels.close()


def control_stub(channel: grpc.Channel) -> Any:
    """A ``ShardControl`` stub on ``channel`` (the generated class is untyped)."""
    factory: Any = shard_pb2_grpc.ShardControlStub
    return factory(channel)


class _Untraced:
    """Steps not recorded (a source's push runs inside its export call)."""

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Any]:
        yield trace.INVALID_SPAN


_UNTRACED: Any = _Untraced()


def _pushed(session_key: str, epoch: int, chunk: Any, max_bytes: int) -> Exported:
    """The answer of a source that imported the state into the target itself, checked."""
    if (chunk.session_key, chunk.epoch, chunk.last, chunk.data) != (session_key, epoch, True, b""):
        raise MigrationFailed(
            f"session {session_key!r}: the source's push answer is malformed "
            f"(key {chunk.session_key!r}, epoch {chunk.epoch}, last {chunk.last})",
            session_key,
        )
    if chunk.total_bytes > max_bytes:
        raise MigrationFailed(
            f"session {session_key!r}: the source pushed {chunk.total_bytes} bytes, over "
            f"the store's limit of {max_bytes}",
            session_key,
        )
    return Exported(b"", chunk.state_version, None, pushed=chunk.total_bytes)


def _release_request(session_key: str, epoch: int, new_owner: str) -> Any:
    return shard_pb2.ReleaseSessionRequest(
        session_key=session_key, epoch=epoch, new_owner=new_owner
    )


def _unreachable(error: grpc.RpcError) -> bool:
    from shardroute.transport.failures import Failure, classify

    return classify(error) is Failure.NOT_SENT
