"""The ``ShardControl`` service's gRPC handlers. The asyncio flavour is the source
(``_async_control.py``); the threaded one (``_sync_control.py``) is generated from it by
``scripts/unasync.py``. The answers themselves are :class:`~shardroute.server.control.
ControlAnswers` (blocking, shared); here they are run (off the event loop, and on the
sessions' executor when they may wait for a turn) and refusals become statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from shardroute._io.aio import run_blocking, run_waiting
from shardroute._validate import grace_or
from shardroute.errors import ChunkError, ConfigError, Refused
from shardroute.server.control import chunk_refusal, control_handler
from shardroute.server.lifecycle import ServerState

if TYPE_CHECKING:
    from shardroute.server._async import AsyncShardServer

__all__ = ["control_calls"]

_DRAIN_BEGUN = frozenset({ServerState.DRAINING, ServerState.STOPPING, ServerState.STOPPED})


def _nothing(_result: object) -> None:
    """Nothing to undo when a caller goes away (the answer is simply not sent)."""


async def _abort(context: Any, refused: Refused) -> None:
    if refused.trailers:
        context.set_trailing_metadata(refused.trailers)
    await context.abort(refused.code, refused.details)


def control_calls(server: AsyncShardServer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The ``ShardControl`` handler of ``server`` (its ``begin_drain`` starts a drain)."""
    answers = server._answers
    sessions = server.sessions
    guard = server._control_guard

    async def authorize(context: Any) -> None:
        """Admin methods first: an unauthorised caller is refused, nothing changed."""
        refused = guard.refusal(context)
        if refused is not None:
            await _abort(context, refused)

    async def get_status(request: Any, context: Any) -> Any:
        await authorize(context)
        return answers.status()

    async def drain(request: Any, context: Any) -> Any:
        await authorize(context)
        try:
            grace_or(request.grace_s, server.config.drain_grace_s)  # NaN, inf: refused
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with answers.answering():  # from here the stop lets the reply out
            if server.state is ServerState.SERVING:
                answers.take_drain_request(request)
                server.begin_drain(request.grace_s or None)
                await run_blocking(server._lifecycle.wait_for, _DRAIN_BEGUN)
            return await run_blocking(answers.drain_reply, request, context.time_remaining())

    async def list_sessions(request: Any, context: Any) -> Any:
        await authorize(context)
        return answers.sessions_page(request)

    async def export_session(request: Any, context: Any) -> AsyncIterator[Any]:
        await authorize(context)
        try:
            # It may wait for an in-flight turn: on the sessions' executor, like turns.
            chunks = await run_waiting(
                lambda: sessions.executor,
                answers.export_answer,
                request,
                context.time_remaining(),
                undo=_nothing,
            )
        except Refused as refused:
            await _abort(context, refused)
        for chunk in chunks:
            yield chunk

    async def import_session(request_iterator: Any, context: Any) -> Any:
        await authorize(context)
        assembler = answers.new_assembler()
        try:
            async for chunk in request_iterator:
                assembler.add(chunk)
            return await run_blocking(answers.import_assembled, assembler)
        except ChunkError as exc:
            await _abort(context, chunk_refusal(exc))
        except Refused as refused:
            await _abort(context, refused)

    async def warm_session(request: Any, context: Any) -> Any:
        await authorize(context)
        try:
            return await run_blocking(answers.warm, request)
        except Refused as refused:
            await _abort(context, refused)

    async def release_session(request: Any, context: Any) -> Any:
        await authorize(context)
        try:
            return await run_blocking(answers.release, request)
        except Refused as refused:
            await _abort(context, refused)

    async def end_session(request: Any, context: Any) -> Any:
        try:
            # It may wait for an in-flight turn: on the sessions' executor, like turns.
            return await run_waiting(
                lambda: sessions.executor,
                answers.end_session,
                request,
                context.invocation_metadata(),
                undo=_nothing,
            )
        except Refused as refused:
            await _abort(context, refused)

    return control_handler(
        get_status,
        drain,
        list_sessions,
        export_session,
        import_session,
        warm_session,
        release_session,
        end_session,
    )
