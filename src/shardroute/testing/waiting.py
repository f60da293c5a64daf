"""Waiting for a condition in tests, instead of sleeping for a guessed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Return as soon as ``condition()`` is true; raise AssertionError naming ``what``
    after ``timeout`` seconds. Checks every 10 ms."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        pause.wait(0.01)
