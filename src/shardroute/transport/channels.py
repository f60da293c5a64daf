"""One gRPC channel per shard: created on first use, closed when the shard leaves.

The pool is generic over the channel type so the sync client (``grpc.Channel``) and
the asyncio client (``grpc.aio.Channel``) share it. ``create`` gets the :class:`Shard`
(its address, and whether it serves TLS). Reads (``callable_for``) take no
lock once a channel exists; creating and closing take a small lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from shardroute.errors import ClientClosed
from shardroute.model import Shard
from shardroute.transport.methods import MethodSpec

__all__ = ["KEEPALIVE_OPTIONS", "ChannelPool", "channel_options"]

C = TypeVar("C")

KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
"""HTTP/2 pings every second on each shard channel, answered within a second: a shard
that stops answering (SIGSTOPped, wedged, cut off by the network) fails the calls on
that connection with ``UNAVAILABLE`` "ping timeout" within about 2 s, and its next
connection attempt fails fast, so the shard is ejected and its sessions fail over
instead of waiting for their deadlines. Shards permit these pings
(``ServerConfig.grpc_options``). A client's own ``channel_options`` override any of them."""


def channel_options(
    max_message_bytes: int, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """The arguments of every shard channel: message size limits, then
    :data:`KEEPALIVE_OPTIONS`, then ``extra`` (the client's own, which replace a
    default of the same name)."""
    own = {name for name, _ in extra}
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *(option for option in KEEPALIVE_OPTIONS if option[0] not in own),
        *extra,
    ]


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

    def shard_ids(self) -> list[str]:
        """Ids of the shards this pool has a channel to now."""
        with self._lock:
            return list(self._entries)

    def retain(self, shards: Mapping[str, Shard]) -> list[str]:
        """Close the channels of shards not in ``shards`` (a topology's, by id) or that
        moved address.

        Returns the ids whose channels were closed.
        """
        with self._lock:
            gone = [
                shard_id
                for shard_id, entry in self._entries.items()
                if (shard := shards.get(shard_id)) is None or shard.address != entry.address
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
