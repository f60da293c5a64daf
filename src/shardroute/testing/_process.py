"""What the embedded servers (etcd, Redis) share: one child process, stopped, killed
and restarted the same way."""

from __future__ import annotations

import abc
import signal
import subprocess
from typing import Self

__all__ = ["ServerProcess"]


class ServerProcess(abc.ABC):
    """One server child process (``_process``) that a subclass starts in ``start()`` and
    removes in ``close()``: stop (SIGTERM), kill (SIGKILL), restart (same ports, same
    data) and use as a context manager."""

    _process: subprocess.Popen[bytes] | None = None

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
