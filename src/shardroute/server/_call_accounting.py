"""What the load interceptors share: counting a call once, the load trailer, handler
re-wrapping, and the sync server's counting worker pool.

The logic lives in :class:`~shardroute.server.load.LoadAccounting`; the interceptors
(``_async_interceptor.py``, written once, and its generated ``_sync_interceptor.py``)
only wrap a handler's behaviour so that:

- a call counts as in flight from when its behaviour starts until it returns, raises,
  or (streams) sends its last message or is cancelled;
- its duration goes into the latency window;
- the ``x-shardroute-load`` trailer (:data:`shardroute.metadata.LOAD`) is *added* to the
  trailing metadata the handler set (the handler's own entries are kept). Its
  ``inflight`` excludes the call being answered: it is the load the shard has once
  this response is done.

Calls to the health and control services are passed through untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
import grpc.aio

from shardroute import metadata
from shardroute.server.load import LoadAccounting

__all__ = ["CountingExecutor", "Once", "rewrap"]

T = TypeVar("T")


class CountingExecutor(futures.ThreadPoolExecutor):
    """The sync server's worker pool; counts submitted work not yet picked up by a
    worker, which is the shard's queue depth."""

    def __init__(self, max_workers: int, accounting: LoadAccounting, name: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=name)
        self._accounting = accounting

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> futures.Future[T]:
        accounting = self._accounting

        def run() -> T:
            accounting.dequeued()
            return fn(*args, **kwargs)

        accounting.enqueued()
        try:
            return super().submit(run)
        except BaseException:
            accounting.dequeued()
            raise


def _trailer(accounting: LoadAccounting, capacity: int) -> tuple[str, str]:
    return metadata.LOAD, metadata.format_load(
        accounting.inflight, accounting.queue_depth, capacity
    )


def _add_trailer(context: Any, accounting: LoadAccounting, capacity: int) -> None:
    getter = getattr(context, "trailing_metadata", None)
    existing = getter() if callable(getter) else None
    kept = tuple((k, v) for k, v in (existing or ()) if k != metadata.LOAD)
    # Fails only when the call is already finished: no trailer then.
    with contextlib.suppress(Exception):
        context.set_trailing_metadata((*kept, _trailer(accounting, capacity)))


class Once:
    """Finishes a call's accounting exactly once (generator close, done callback)."""

    __slots__ = ("_accounting", "_capacity", "_context", "_pending", "_started")

    def __init__(self, accounting: LoadAccounting, capacity: int, context: Any) -> None:
        self._accounting = accounting
        self._capacity = capacity
        self._context = context
        self._started = accounting.call_started()
        self._pending = [True]

    def finish(self, trailer: bool = True) -> None:
        try:
            self._pending.pop()  # atomic: only the first caller gets past this
        except IndexError:
            return
        self._accounting.call_finished(self._started)
        if trailer:
            _add_trailer(self._context, self._accounting, self._capacity)


def rewrap(
    handler: grpc.RpcMethodHandler,  # type: ignore[type-arg]
    unary: Callable[[Any], Any],
    streaming: Callable[[Any], Any],
) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
    """The same RPC handler with its behaviour wrapped (``unary`` for single-response
    kinds, ``streaming`` for streaming responses); the sync and asyncio interceptors
    share it."""
    h: Any = handler
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(h.unary_unary), h.request_deserializer, h.response_serializer
        )
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(h.stream_unary), h.request_deserializer, h.response_serializer
        )
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(h.unary_stream), h.request_deserializer, h.response_serializer
        )
    if h.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            streaming(h.stream_stream), h.request_deserializer, h.response_serializer
        )
    return handler
