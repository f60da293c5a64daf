"""One gRPC channel per shard: created on first use, closed when the shard leaves.

The pool is generic over the channel type so the sync client (``grpc.Channel``) and
the asyncio client (``grpc.aio.Channel``) share it. ``create`` gets the :class:`Shard`
(its address, and whether it serves TLS). Reads (``callable_for``) take no
lock once a channel exists; creating and closing take a small lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from shardroute.errors import ClientClosed
from shardroute.model import Shard, Topology
from shardroute.transport.methods import MethodSpec

__all__ = ["ChannelPool"]

C = TypeVar("C")


class _Entry(Generic[C]):
    __slots__ = ("address", "callables", "channel")

    def __init__(self, address: str, channel: C) -> None:
        self.address = address
        self.channel = channel
        self.callables: dict[str, Any] = {}


class ChannelPool(Generic[C]):
    """Channels by shard id, with a cache of multi-callables per method path."""

    def __init__(self, create: Callable[[Shard], C], close: Callable[[C], None]) -> None:
        self._create = create
        self._close = close
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry[C]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def channel(self, shard: Shard) -> C:
        """The channel to ``shard`` (created now if needed)."""
        return self._entry(shard).channel

    def callable_for(self, shard: Shard, spec: MethodSpec) -> Any:
        """The multi-callable for ``spec`` on ``shard``'s channel (cached)."""
        entry = self._entries.get(shard.id)
        if entry is None or entry.address != shard.address:
            entry = self._entry(shard)
        found = entry.callables.get(spec.path)
        if found is None:
            factory = getattr(entry.channel, spec.kind)
            found = factory(
                spec.path,
                request_serializer=spec.request_serializer,
                response_deserializer=spec.response_deserializer,
            )
            entry.callables[spec.path] = found
        return found

    def _entry(self, shard: Shard) -> _Entry[C]:
        stale: _Entry[C] | None = None
        with self._lock:
            if self._closed:
                raise ClientClosed("the client is closed")
            entry = self._entries.get(shard.id)
            if entry is not None and entry.address == shard.address:
                return entry
            stale = entry
            entry = self._entries[shard.id] = _Entry(shard.address, self._create(shard))
        if stale is not None:
            self._close(stale.channel)
        return entry

    def retain(self, topology: Topology) -> list[str]:
        """Close the channels of shards that left ``topology`` or moved address.

        Returns the ids whose channels were closed.
        """
        with self._lock:
            gone = [
                shard_id
                for shard_id, entry in self._entries.items()
                if (shard := topology.shards.get(shard_id)) is None
                or shard.address != entry.address
            ]
            entries = [self._entries.pop(shard_id) for shard_id in gone]
        for entry in entries:
            self._close(entry.channel)
        return gone

    def close(self) -> None:
        """Close every channel. Idempotent."""
        with self._lock:
            self._closed = True
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            self._close(entry.channel)
