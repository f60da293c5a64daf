"""What the asyncio shard server does differently from the threaded one (the threaded
side: :mod:`._grpc_threads`, same names). The shell itself is written once
(``_async.py``) and generated for threads (``_sync.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc.aio

from shardroute.server._async_interceptor import AsyncLoadInterceptor
from shardroute.server.config import ServerConfig
from shardroute.server.load import LoadAccounting
from shardroute.telemetry import Telemetry

__all__ = [
    "begin_stop",
    "end_stop",
    "install_signals",
    "join_background",
    "new_server",
    "start_background",
    "wait_idle",
]


def new_server(
    config: ServerConfig,
    accounting: LoadAccounting,
    name: str,
    telemetry: Telemetry | None = None,
) -> tuple[grpc.aio.Server, Any, None]:
    """The gRPC server (load interceptor on), its health servicer, and no worker pool
    (handlers run on the event loop)."""
    server = grpc.aio.server(
        interceptors=[
            AsyncLoadInterceptor(accounting, config.capacity, telemetry, config.shard_id)
        ],
        options=config.grpc_options(),
    )
    health = importlib.import_module("grpc_health.v1._async").HealthServicer()
    return server, health, None


def begin_stop(server: grpc.aio.Server, grace: float | None) -> asyncio.Future[None]:
    """Start stopping ``server`` (new calls refused from now on); returns the handle."""
    return asyncio.ensure_future(server.stop(grace))


async def end_stop(stopping: Awaitable[None]) -> None:
    """Wait until a stop begun by :func:`begin_stop` is done."""
    await stopping


async def wait_idle(accounting: LoadAccounting, deadline: float) -> bool:
    """Wait until no call is in flight or ``deadline`` passed; True when idle. The
    counters change on this loop, so they are polled here (every 10 ms)."""
    while accounting.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return not accounting.inflight


def start_background(name: str, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """Run ``work`` in the background (a task on this loop)."""
    return asyncio.get_running_loop().create_task(work(), name=name)  # type: ignore[arg-type]


async def join_background(handle: asyncio.Task[None]) -> None:
    """Wait for work started by :func:`start_background`."""
    await handle


def install_signals(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_signal`` on SIGTERM and SIGINT (the main thread's loop only); returns
    what puts the previous handling back."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore
