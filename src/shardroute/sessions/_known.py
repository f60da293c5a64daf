"""The overrides a mover knows without reading etcd (docs/migration.md, "Migration"): what
its topology follows, and its own last commits. A fence decided on one compares its
revision, so one that is behind only makes that swap fail (then the mover reads etcd)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from shardroute.model import Override, Topology

__all__ = ["KnownOverrides"]

REMEMBERED_COMMITS = 4096
"""How many of its own commits a mover remembers (the override each wrote)."""


class KnownOverrides:
    """A mover's own last commits by session, bounded (thread-safe)."""

    def __init__(self, limit: int = REMEMBERED_COMMITS) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._committed: OrderedDict[str, Override] = OrderedDict()

    def take(self, session_key: str, topology: Topology) -> Override | None:
        """The session's override as known without a read: the newer of what
        ``topology`` follows (sources built with overrides: a client's
        ``follow_overrides``, a shard's own) and the mover's own last commit of it
        (forgotten here: a commit remembers it again). None (read etcd) when neither
        has one, or it shows a move in progress."""
        with self._lock:
            mine = self._committed.pop(session_key, None)
        found = topology.overrides.get(session_key)
        if mine is not None and (found is None or mine.version > found.version):
            found = mine
        if found is None or found.moving_to or found.version <= 0:
            return None
        return found

    def remember(self, session_key: str, committed: Override) -> None:
        """The override this mover's commit of ``session_key`` wrote."""
        with self._lock:
            self._committed[session_key] = committed
            while len(self._committed) > self._limit:
                self._committed.popitem(last=False)
