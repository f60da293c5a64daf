"""The threaded side of :mod:`shardroute._io` (the asyncio side: :mod:`.aio`)."""

from __future__ import annotations

import time
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


def sleep(seconds: float) -> None:
    """Pause this thread (a refused call's backoff)."""
    time.sleep(seconds)


def unary(method: Any, request: Any, timeout: float, metadata: Any) -> Any:
    """A unary call: its response (the asyncio twin returns an awaitable of it)."""
    return method(request, timeout=timeout, metadata=metadata)


def unary_with_trailers(
    method: Any, request: Any, timeout: float, metadata: Any
) -> tuple[Any, Any]:
    """A unary call: its response and its trailing metadata (``LoadBoard`` parses them
    later, off the call path). The call object itself is never kept: a finished sync
    call held past its end made the next calls on the channel ~0.1 ms slower
    (docs/benchmarks.md, "Trailers, sampled")."""
    response, call = method.with_call(request, timeout=timeout, metadata=metadata)
    return response, call.trailing_metadata()


def trailers_of(call: Any) -> Any:
    """The trailing metadata of a finished call (a stream that was read to its end)."""
    return call.trailing_metadata()


def run_blocking(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run a blocking function (in the calling thread: it is a worker already)."""
    return fn(*args)


def run_waiting(
    executor: Callable[[], Executor],
    fn: Callable[[*Ts], T],
    *args: *Ts,
    undo: Callable[[T], None],
) -> T:
    """Run a function that may wait a long time, in the calling thread (a worker of the
    server's pool; nothing to cancel it, so ``undo`` is never needed)."""
    return fn(*args)


def on_call_done(context: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the RPC of ``context`` ends, however it ends."""
    context.add_callback(callback)


def finish_before_abort(context: Any, finish: Callable[[], None]) -> Any:
    """``context`` itself: the threaded server sends an aborted call's status once the
    handler has raised, so the interceptor's ``finally`` finishes the call in time."""
    return context


def streams_by_yielding(behavior: Callable[..., Any]) -> bool:
    """Whether a streaming handler's messages come from iterating what it returns:
    always, on the threaded server."""
    return True
