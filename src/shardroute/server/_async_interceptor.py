"""The load interceptor. The asyncio flavour is the source (``_async_interceptor.py``);
the threaded one (``_sync_interceptor.py``) is generated from it by
``scripts/unasync.py``; where the two differ lives in :mod:`shardroute._io`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from shardroute._io.aio import on_call_done, streams_by_yielding
from shardroute.server._call_accounting import Once, rewrap
from shardroute.server.load import LoadAccounting, is_accounted

__all__ = ["AsyncLoadInterceptor"]


class AsyncLoadInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Load accounting for the shard's gRPC server (docs/server.md, "Load reporting")."""

    def __init__(self, accounting: LoadAccounting, capacity: int) -> None:
        self._accounting = accounting
        self._capacity = capacity

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not is_accounted(handler_call_details.method):
            return handler
        accounting, capacity = self._accounting, self._capacity

        def unary(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            async def wrapped(request: Any, context: Any) -> Any:
                once = Once(accounting, capacity, context)
                try:
                    return await behavior(request, context)
                finally:
                    once.finish()

            return wrapped

        def streaming(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            if not streams_by_yielding(behavior):
                # It writes with context.write(): counted like a unary behaviour.
                return unary(behavior)

            async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
                once = Once(accounting, capacity, context)
                # A cancelled stream may never resume its generator: finish on call end.
                on_call_done(context, lambda: once.finish(trailer=False))
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    once.finish()

            return wrapped

        return rewrap(handler, unary, streaming)
