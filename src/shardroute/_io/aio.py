"""The asyncio side of :mod:`shardroute._io` (the threaded side: :mod:`.sync`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

__all__ = [
    "finish_before_abort",
    "on_call_done",
    "run_blocking",
    "run_waiting",
    "sleep",
    "streams_by_yielding",
    "trailers_of",
    "unary",
    "unary_with_trailers",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def sleep(seconds: float) -> None:
    """Pause this task (a refused call's backoff)."""
    await asyncio.sleep(seconds)


def unary(method: Any, request: Any, timeout: float, metadata: Any) -> Any:
    """Start a unary call: an awaitable of its response (grpc.aio's call object; a plain
    function, so the caller's ``await`` is the only coroutine step)."""
    return method(request, timeout=timeout, metadata=metadata)


async def unary_with_trailers(
    method: Any, request: Any, timeout: float, metadata: Any
) -> tuple[Any, Any]:
    """A unary call: its response and its trailing metadata (``LoadBoard`` parses them
    later, off the call path)."""
    call = method(request, timeout=timeout, metadata=metadata)
    response = await call
    return response, await call.trailing_metadata()


async def trailers_of(call: Any) -> Any:
    """The trailing metadata of a finished call (a stream that was read to its end)."""
    return await call.trailing_metadata()


async def run_blocking(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run a blocking function off the event loop (a worker thread)."""
    return await asyncio.to_thread(fn, *args)


async def run_waiting(
    executor: Callable[[], Executor],
    fn: Callable[[*Ts], T],
    *args: *Ts,
    undo: Callable[[T], None],
) -> T:
    """Run a blocking function that may wait a long time (for a busy or moving session)
    on ``executor()``, its own pool, so waiting calls never take the threads other
    blocking steps need. If the caller is cancelled while it waits, the function still
    finishes in its thread: ``undo`` is then called with its result."""
    begun = asyncio.get_running_loop().run_in_executor(executor(), fn, *args)
    try:
        return await asyncio.shield(begun)
    except asyncio.CancelledError:

        def settle(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                undo(done.result())

        begun.add_done_callback(settle)
        raise


def on_call_done(context: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the RPC of ``context`` ends, however it ends."""
    context.add_done_callback(lambda _context: callback())


def finish_before_abort(context: Any, finish: Callable[[], None]) -> Any:
    """``context`` as the handler sees it: its ``abort()`` calls ``finish`` first.
    asyncio sends the status inside ``abort()``, so what ``finish`` does (the call's
    accounting and load trailer) must happen before it, not after the handler."""
    return _FinishingContext(context, finish)


class _FinishingContext:
    __slots__ = ("_context", "_finish")

    def __init__(self, context: Any, finish: Callable[[], None]) -> None:
        self._context = context
        self._finish = finish

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        if trailing_metadata:
            self._context.set_trailing_metadata(trailing_metadata)
        self._finish()
        await self._context.abort(code, details)


def streams_by_yielding(behavior: Callable[..., Any]) -> bool:
    """Whether a streaming handler yields its messages (an async generator); one that
    writes them with ``context.write()`` is a plain coroutine."""
    return inspect.isasyncgenfunction(behavior)
