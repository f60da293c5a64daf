"""Session codecs: a session's state object to bytes and back (store and migration)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["JsonCodec", "SessionCodec"]

S = TypeVar("S")


class SessionCodec(Protocol[S]):
    """Turns a session's state object into bytes and back (store and migration)."""

    def encode(self, state: S) -> bytes:
        """The state as bytes."""
        ...

    def decode(self, data: bytes) -> S:
        """The state from bytes made by :meth:`encode`."""
        ...

    def empty(self) -> S:
        """The state of a new session."""
        ...


class JsonCodec:
    """State as compact JSON (UTF-8). ``empty`` makes a new session's state
    (default: ``{}``); the state must be JSON-serialisable (dicts, lists, strings, ...)."""

    def __init__(self, empty: Callable[[], Any] = dict) -> None:
        self._empty = empty

    def encode(self, state: Any) -> bytes:
        """Compact JSON, keys sorted."""
        return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()

    def decode(self, data: bytes) -> Any:
        """Parse the JSON; empty bytes give a new session's state."""
        return json.loads(data) if data else self._empty()

    def empty(self) -> Any:
        """A new session's state."""
        return self._empty()
