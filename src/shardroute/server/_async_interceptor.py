"""The load interceptor. The asyncio flavour is the source (``_async_interceptor.py``);
the threaded one (``_sync_interceptor.py``) is generated from it by
``scripts/unasync.py``; where the two differ lives in :mod:`shardroute._io`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from shardroute._io.aio import finish_before_abort, on_call_done, streams_by_yielding
from shardroute.server._call_accounting import Once, rewrap
from shardroute.server.load import LoadAccounting, is_accounted
from shardroute.telemetry import Telemetry
from shardroute.telemetry.server import ServerRecord

__all__ = ["AsyncLoadInterceptor"]


class AsyncLoadInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Load accounting for the shard's gRPC server (docs/server.md, "Load reporting"),
    and a server span per call when telemetry is active (docs/observability.md)."""

    def __init__(
        self,
        accounting: LoadAccounting,
        capacity: int,
        telemetry: Telemetry | None = None,
        shard_id: str = "",
    ) -> None:
        self._accounting = accounting
        self._capacity = capacity
        self._telemetry = telemetry if telemetry is not None else Telemetry()
        self._shard_id = shard_id

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not is_accounted(handler_call_details.method):
            return handler
        accounting, capacity = self._accounting, self._capacity
        telemetry, shard_id = self._telemetry, self._shard_id
        method = handler_call_details.method

        def unary(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            async def wrapped(request: Any, context: Any) -> Any:
                once = Once(accounting, capacity, context)
                record = ServerRecord.start(telemetry, shard_id, method, context)
                if record is not None:
                    record.attach()  # the handler's own spans are the call's children
                error: BaseException | None = None
                try:
                    return await behavior(request, finish_before_abort(context, once.finish))
                except BaseException as failed:
                    error = failed
                    raise
                finally:
                    once.finish()
                    if record is not None:
                        record.finish(context, error)

            return wrapped

        def streaming(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            if not streams_by_yielding(behavior):
                # It writes with context.write(): counted like a unary behaviour.
                return unary(behavior)

            async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
                once = Once(accounting, capacity, context)
                record = ServerRecord.start(telemetry, shard_id, method, context)

                def done() -> None:
                    once.finish(trailer=False)
                    if record is not None:
                        record.finish(context)

                # A cancelled stream may never resume its generator: finish on call end.
                on_call_done(context, done)
                error: BaseException | None = None
                try:
                    async for response in behavior(
                        request, finish_before_abort(context, once.finish)
                    ):
                        yield response
                except BaseException as failed:
                    error = failed
                    raise
                finally:
                    once.finish()
                    if record is not None:
                        record.finish(context, error)

            return wrapped

        return rewrap(handler, unary, streaming)
