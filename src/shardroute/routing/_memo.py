"""The affinity memo: sessions pinned away from their home shard, bounded by size and TTL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from cachetools import TTLCache

__all__ = ["AffinityMemo", "Pin"]

Pin = tuple[str, float, float]
"""A memo entry as the router reads it: (shard id, refresh after, expires at)."""


class _IndexedTTLCache(TTLCache[str, str, float]):
    """A TTLCache that mirrors its entries into a plain dict.

    The dict is what the hot path reads, without a lock and without the Python-level
    overhead of ``TTLCache.get`` (about 1 µs a miss, measured). Every way an entry
    leaves the cache (LRU eviction through ``popitem`` → ``del``, expiry, ``clear``)
    also removes it from the mirror.
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float],
        index: dict[str, tuple[str, float, float]],
    ) -> None:
        super().__init__(maxsize, ttl, timer)
        self._index = index

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        index = self._index
        index.pop(key, None)  # re-insert at the end: the mirror keeps refresh order
        now = self.timer()
        index[key] = (value, now + self.ttl / 2.0, now + self.ttl)

    def __delitem__(self, key: str) -> None:
        self._index.pop(key, None)
        super().__delitem__(key)

    def expire(self, time: float | None = None) -> list[tuple[str, str]]:
        expired = super().expire(time)
        for key, _ in expired:
            self._index.pop(key, None)
        return expired

    def clear(self) -> None:
        super().clear()
        self._index.clear()


class AffinityMemo:
    """A bounded map of session key → shard id, with a sliding TTL. Thread-safe.

    Entries are stored in a :class:`cachetools.TTLCache` (LRU eviction beyond
    ``maxsize``, expiry after ``ttl_s``). A use past half an entry's TTL re-inserts it
    (:meth:`touch`, or :meth:`get`), so a session idle for ``ttl_s`` is forgotten and an
    active one is kept (an entry expires between ``ttl_s / 2`` and ``ttl_s`` after its
    last use). Lookups take no lock; writes take one small lock.

    The router only reads it (:attr:`pins`, :meth:`peek`); the transport writes it
    after a call went somewhere (``Router.settle``, ``Router.remember``).

    Args:
        maxsize: most entries kept; the least recently refreshed go first.
        ttl_s: seconds before an idle entry expires.
        clock: monotonic seconds; inject a fake one in tests.
    """

    def __init__(
        self, maxsize: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._ttl = float(ttl_s)
        # session key -> (shard id, refresh after, expires at): read without a lock
        self._index: dict[str, tuple[str, float, float]] = {}
        self._cache = _IndexedTTLCache(maxsize, self._ttl, clock, self._index)

    @property
    def pins(self) -> Mapping[str, Pin]:
        """Read-only view of the live entries by session key: (shard id, refresh after,
        expires at). No lock, no refresh: what the router reads. Entries past their
        expiry may linger until the next write; readers compare ``expires at``."""
        return self._index

    def peek(self, session_key: str) -> str | None:
        """The shard id a session is pinned to, or None. Writes nothing (no refresh,
        no expiry sweep), unlike :meth:`get`."""
        entry = self._index.get(session_key)
        if entry is None or self._clock() >= entry[2]:
            return None
        return entry[0]

    def touch(self, session_key: str) -> None:
        """A call of a pinned session was served by its pinned shard: renew the entry
        if it is past half its TTL."""
        entry = self._index.get(session_key)
        if entry is not None and self._clock() >= entry[1]:
            with self._lock:
                if self._index.get(session_key) == entry:
                    self._cache[session_key] = entry[0]

    def resize(self, maxsize: int, ttl_s: float) -> None:
        """Change the size bound and TTL, keeping the live pins (the least recently
        refreshed go first if they no longer fit). The :attr:`pins` view stays valid."""
        with self._lock:
            self._cache.expire(self._clock())
            live = [(k, v) for k, (v, _, _) in self._index.items()]
            self._index.clear()
            self._ttl = float(ttl_s)
            self._cache = _IndexedTTLCache(maxsize, self._ttl, self._clock, self._index)
            for key, shard_id in live:
                self._cache[key] = shard_id

    @property
    def maxsize(self) -> int:
        """Most entries kept."""
        return int(self._cache.maxsize)

    @property
    def ttl_s(self) -> float:
        """Seconds an idle entry lives."""
        return self._ttl

    def get(self, session_key: str) -> str | None:
        """The shard id the session is pinned to, or None."""
        entry = self._index.get(session_key)
        if entry is None:
            return None
        shard_id, refresh_at, expires = entry
        now = self._clock()
        if now >= expires:
            with self._lock:
                self._cache.expire(now)
            return None
        if now >= refresh_at:
            with self._lock:
                if self._index.get(session_key) == entry:
                    self._cache[session_key] = shard_id
        return shard_id

    def put(self, session_key: str, shard_id: str) -> None:
        """Pin a session to a shard (replacing any earlier pin)."""
        with self._lock:
            self._cache[session_key] = shard_id

    def discard(self, session_key: str) -> None:
        """Forget a session's pin, if any."""
        with self._lock:
            if session_key in self._index:
                self._cache.pop(session_key, None)
                self._index.pop(session_key, None)

    def discard_if(self, session_key: str, shard_id: str) -> None:
        """Forget a session's pin only if it still points to ``shard_id``."""
        entry = self._index.get(session_key)
        if entry is not None and entry[0] == shard_id:
            with self._lock:
                entry = self._index.get(session_key)
                if entry is not None and entry[0] == shard_id:
                    self._cache.pop(session_key, None)
                    self._index.pop(session_key, None)

    def items(self) -> list[tuple[str, str]]:
        """Live (session key, shard id) pairs, least recently refreshed first."""
        with self._lock:
            self._cache.expire(self._clock())
            return [(k, v) for k, (v, _, _) in self._index.items()]

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire(self._clock())
            return len(self._index)

    def __contains__(self, session_key: object) -> bool:
        return isinstance(session_key, str) and self.get(session_key) is not None
