"""The client call loops. The asyncio flavour is the source (``_async_calls.py``); the
threaded one (``_sync_calls.py``) is generated from it by ``scripts/unasync.py``.

One loop per call shape, and a recorded form of each (telemetry active: it ends the
call's :class:`~shardroute.telemetry.client.CallRecord`). The first attempt goes to the
decision's shard with no per-call objects; only a failure builds the attempt plan
(:class:`Attempts`), which says where to go next (``ClientCore.failed``). In-flight
counts and the affinity memo are updated by the core, never by the router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from shardroute._io.aio import sleep, trailers_of, unary, unary_with_trailers
from shardroute.transport.attempts import Attempts, Metadata
from shardroute.transport.methods import MethodSpec
from shardroute.transport.turns import is_replay, recorded_reply, turn_id_of

if TYPE_CHECKING:
    from shardroute._core import CallOptions, ClientCore
    from shardroute.routing import Decision

__all__ = ["AsyncCallLoops"]


class AsyncCallLoops:
    """``_unary`` and ``_stream`` of :class:`~shardroute.aio.AsyncShardClient` (a base
    class: it needs the client's ``_core``)."""

    _core: ClientCore[Any]

    async def _unary(
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
        channels, inflight, board = core.channels, core.inflight, core.loads
        shard = decision.shard
        attempts: Attempts | None = None  # built only if an attempt fails
        while True:
            shard_id = shard.id
            method = channels.callable_for(shard, spec)
            inbox = board.inbox  # trailers heard since the board's last merge
            inflight.begin(shard_id)
            try:
                if shard_id in inbox:  # heard from since that merge: no trailers wanted
                    trailers = None
                    response = await unary(method, request, timeout, md)
                else:  # the first call to the shard since that merge: its load trailer too
                    response, trailers = await unary_with_trailers(method, request, timeout, md)
            except grpc.RpcError as error:
                inflight.end(shard_id)
                failed = error
            except BaseException:
                inflight.end(shard_id)
                raise
            else:
                inflight.end(shard_id)
                if trailers is not None:
                    inbox[shard_id] = trailers  # parsed and merged later (LoadBoard)
                core.succeeded(attempts, session_key, decision, shard, started)
                return response
            if is_replay(failed):  # a retried turn the session applied: its recorded reply
                core.succeeded(attempts, session_key, decision, shard)
                return recorded_reply(spec, failed, shard_id, turn_id_of(md) or "")
            attempts, shard, timeout, md = core.failed(
                attempts, spec, session_key, decision, started, timeout, options, shard, failed, md
            )
            if attempts.pause:  # the shard refused it before running it: again, later
                await sleep(attempts.pause)
                timeout = attempts.timeout()

    async def _stream(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> AsyncIterator[Any]:
        core = self._core
        channels, inflight, board = core.channels, core.inflight, core.loads
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
                async for message in call:
                    received = True
                    yield message
            except grpc.RpcError as error:
                failed = error
            finally:
                inflight.end(shard_id)
                if call is not None:
                    call.cancel()  # no-op when finished; stops it if the caller stopped early
            if failed is None:
                if call is not None and shard_id not in (inbox := board.inbox):
                    inbox[shard_id] = await trailers_of(call)
                core.succeeded(attempts, session_key, decision, shard)
                return
            if is_replay(failed):  # applied already: a stream's replies are not kept
                core.succeeded(attempts, session_key, decision, shard)
                recorded_reply(spec, failed, shard_id, turn_id_of(md) or "")
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
                md,
                received,
            )
            if attempts.pause:
                await sleep(attempts.pause)
                timeout = attempts.timeout()

    async def _recorded_unary(
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
        record = options[3]
        assert record is not None
        try:
            response = await self._unary(
                spec, request, session_key, decision, md, timeout, started, options
            )
        except BaseException as error:
            record.finish(error)
            raise
        record.finish()
        return response

    async def _recorded_stream(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> AsyncIterator[Any]:
        record = options[3]
        assert record is not None
        error: BaseException | None = None
        try:
            async for message in self._stream(
                spec, request, session_key, decision, md, timeout, started, options
            ):
                yield message
        except BaseException as failed:
            error = failed
            raise
        finally:
            record.finish(error)
