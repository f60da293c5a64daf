"""A shard server's lifecycle: its states and the thread-safe state machine both shells
drive (start once; stop is idempotent)."""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping

__all__ = ["Lifecycle", "ServerState"]


class ServerState(enum.StrEnum):
    """Where a shard server is in its lifecycle.

    ``created → starting → serving → draining → stopping → stopped``; ``stop()`` may jump
    from any state to ``stopping``. Only ``serving`` and ``draining`` accept calls.
    """

    CREATED = "created"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED: Mapping[ServerState, frozenset[ServerState]] = {
    ServerState.CREATED: frozenset({ServerState.STARTING, ServerState.STOPPING}),
    ServerState.STARTING: frozenset({ServerState.SERVING, ServerState.STOPPING}),
    ServerState.SERVING: frozenset({ServerState.DRAINING, ServerState.STOPPING}),
    ServerState.DRAINING: frozenset({ServerState.STOPPING}),
    ServerState.STOPPING: frozenset({ServerState.STOPPED}),
    ServerState.STOPPED: frozenset(),
}


class Lifecycle:
    """The server's state machine: one lock, no I/O.

    :meth:`advance` moves to a new state when the transition is allowed and returns
    whether it did, so the caller performs the matching I/O exactly once (a second
    ``stop()`` or ``drain()`` finds the transition already taken and does nothing).
    """

    def __init__(self) -> None:
        self._state = ServerState.CREATED
        self._cond = threading.Condition()

    @property
    def state(self) -> ServerState:
        """The current state (one attribute read)."""
        return self._state

    def advance(self, new: ServerState) -> bool:
        """Move to ``new`` if allowed from the current state; True when this call moved."""
        with self._cond:
            if new not in _ALLOWED[self._state]:
                return False
            self._state = new
            self._cond.notify_all()
            return True

    def wait_for(self, states: frozenset[ServerState], timeout: float | None = None) -> bool:
        """Block until the state is one of ``states``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states, timeout)
