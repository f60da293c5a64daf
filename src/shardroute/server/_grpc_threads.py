"""What the threaded shard server does differently from the asyncio one (the asyncio
side: :mod:`._grpc_aio`, same names). The shell itself is written once (``_async.py``)
and generated for threads (``_sync.py``)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health

from shardroute.server._call_accounting import CountingExecutor
from shardroute.server._sync_interceptor import LoadInterceptor
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
) -> tuple[grpc.Server, Any, CountingExecutor]:
    """The gRPC server on a worker pool that counts its queue, with the load
    interceptor, and its health servicer."""
    executor = CountingExecutor(config.workers, accounting, name)
    server = grpc.server(
        executor,
        interceptors=[LoadInterceptor(accounting, config.capacity, telemetry, config.shard_id)],
        options=config.grpc_options(),
    )
    return server, health.HealthServicer(), executor


def begin_stop(server: grpc.Server, grace: float | None) -> threading.Event:
    """Start stopping ``server`` (new calls refused from now on); returns the handle."""
    return server.stop(grace)


def end_stop(stopping: threading.Event) -> None:
    """Wait until a stop begun by :func:`begin_stop` is done."""
    stopping.wait()


def wait_idle(accounting: LoadAccounting, deadline: float) -> bool:
    """Wait until no call is in flight or ``deadline`` passed; True when idle."""
    return accounting.wait_idle(max(0.0, deadline - time.monotonic()))


def start_background(name: str, work: Callable[[], None]) -> threading.Thread:
    """Run ``work`` in the background (a thread)."""
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread


def join_background(handle: threading.Thread) -> None:
    """Wait for work started by :func:`start_background`."""
    handle.join()


def install_signals(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_signal`` on SIGTERM and SIGINT (from the main thread only); returns
    what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
