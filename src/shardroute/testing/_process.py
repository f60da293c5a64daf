"""What the embedded servers (etcd, Redis) share: one child process, stopped, killed
and restarted the same way."""

from __future__ import annotations

import abc
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Self

__all__ = ["ServerProcess"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent SIGTERM when its parent dies (Linux's
    ``PR_SET_PDEATHSIG``), or None where there is no such thing."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above: stop now
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


class ServerProcess(abc.ABC):
    """One server child process (``_process``) that a subclass starts in ``start()`` and
    removes in ``close()``: stop (SIGTERM), kill (SIGKILL), restart (same ports, same
    data) and use as a context manager."""

    _process: subprocess.Popen[bytes] | None = None

    stop_with_parent = False
    """When true (Linux), the child is sent SIGTERM as soon as the thread that started it
    ends, even by SIGKILL: set it only where the server is started from the main thread
    of a process that lives as long as the server should (``shardroute etcd``)."""

    def _child_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments for the server's child process."""
        hook = _stop_with_parent() if self.stop_with_parent else None
        return {} if hook is None else {"preexec_fn": hook}

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the server and wait until it answers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the server and remove its files. Idempotent."""

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), keeping its data."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), keeping its data."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> Self:
        """Start again on the same ports with the same data."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
