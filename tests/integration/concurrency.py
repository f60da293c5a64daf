"""Helpers for tests that race threads against one another."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from shardroute.errors import StaleState

T = TypeVar("T")


def race(count: int, attempt: Callable[[int], T]) -> tuple[list[T], list[StaleState]]:
    """Run ``attempt(i)`` in ``count`` threads released together; collect wins and losses."""
    barrier = threading.Barrier(count)
    lock = threading.Lock()
    wins: list[T] = []
    stale: list[StaleState] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            result = attempt(i)
        except StaleState as exc:
            with lock:
                stale.append(exc)
        else:
            with lock:
                wins.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wins, stale
