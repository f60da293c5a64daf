"""The TopologySource contract and the snapshot holder every source shares.

A source owns one reference to the current :class:`Topology`. Readers call
:meth:`current` (no lock: reading one attribute is atomic). Writers build a new
snapshot off to the side and :meth:`SnapshotHolder.publish` it: one reference swap,
then waiters wake and subscribers are called, in the publishing thread, in order.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from shardroute.errors import ShardRouteError, TopologyTimeout
from shardroute.model import Topology

if TYPE_CHECKING:
    from shardroute.discovery.keys import KeySchema

__all__ = ["HolderSource", "SnapshotHolder", "Subscriber", "TopologySource"]

log = logging.getLogger("shardroute.discovery")

Subscriber = Callable[[Topology], None]


@runtime_checkable
class TopologySource(Protocol):
    """Where a client gets the live topology of one service.

    Lifecycle: ``start()`` once (blocks until the first snapshot is loaded or raises),
    ``close()`` is idempotent; both are also reachable through ``with``.
    Thread contract: every method may be called from any thread.
    """

    @property
    def service(self) -> str:
        """The service name this source follows."""
        ...

    def start(self) -> None:
        """Load the first snapshot and begin following changes."""
        ...

    def close(self) -> None:
        """Stop following changes. Idempotent."""
        ...

    def current(self) -> Topology:
        """The latest snapshot. Never blocks, never does I/O."""
        ...

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(snapshot)`` on every new snapshot; returns an unsubscribe."""
        ...

    def wait_for(self, predicate: Callable[[Topology], bool], timeout: float = 10.0) -> Topology:
        """Block until ``predicate(snapshot)`` holds; raise TopologyTimeout after ``timeout``."""
        ...

    def staleness(self) -> float:
        """Seconds since the source lost its live view (0.0 while it is live)."""
        ...

    @property
    def last_error(self) -> ShardRouteError | None:
        """The error that made the view stale, or None while live."""
        ...


class SnapshotHolder:
    """The shared part of every source: the current snapshot, waiters, subscribers,
    the count of malformed records seen, and staleness.
    """

    def __init__(self, initial: Topology) -> None:
        self._topology = initial
        self._cond = threading.Condition()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._stale_since: float | None = None
        self._last_error: ShardRouteError | None = None
        self.malformed_total = 0
        """Malformed records met since start (each logged once, when met)."""

    @property
    def service(self) -> str:
        """The service name of the snapshots."""
        return self._topology.service

    def current(self) -> Topology:
        """The latest snapshot (lock-free)."""
        return self._topology

    def publish(self, topology: Topology, *, resync: bool = False) -> bool:
        """Swap in ``topology`` unless it is older than the current one.

        A resync (full read after compaction or an etcd reset) may go back in
        revision and is always taken. Returns whether the snapshot was published.
        """
        with self._cond:
            current = self._topology
            if topology is current:
                return False
            if not resync and topology.revision < current.revision:
                return False
            self._topology = topology
            subscribers = self._subscribers
            self._cond.notify_all()
        for callback in subscribers:
            try:
                callback(topology)
            except Exception:
                log.exception(
                    "topology subscriber %r raised: the new topology is in use, but this "
                    "subscriber missed it; fix the subscriber (traceback below)",
                    callback,
                )
        return True

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Register ``callback`` for new snapshots; returns the function that removes it."""
        with self._cond:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._cond:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def wait_for(self, predicate: Callable[[Topology], bool], timeout: float = 10.0) -> Topology:
        """Block until ``predicate(current())`` holds, or raise TopologyTimeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                topology = self._topology
                if predicate(topology):
                    return topology
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TopologyTimeout(
                        f"topology of {topology.service!r} did not satisfy the condition in "
                        f"{timeout}s (revision {topology.revision}, {len(topology)} shards, "
                        f"last error: {self._last_error})"
                    )
                self._cond.wait(remaining)

    def mark_stale(self, error: ShardRouteError) -> None:
        """Record that the live view is lost (the snapshot stays in use)."""
        with self._cond:
            if self._stale_since is None:
                self._stale_since = time.monotonic()
            self._last_error = error
            self._cond.notify_all()

    def mark_live(self) -> None:
        """Record that the view is live again."""
        with self._cond:
            self._stale_since = None
            self._last_error = None
            self._cond.notify_all()

    def staleness(self) -> float:
        """Seconds since the view was lost, 0.0 while live."""
        since = self._stale_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def last_error(self) -> ShardRouteError | None:
        """Why the view is stale, or None."""
        return self._last_error

    def count_malformed(
        self, errors: Sequence[Exception], known: AbstractSet[str] = frozenset()
    ) -> None:
        """Add malformed records met to the total, and log each key once: not again
        while it stays malformed (``known``: the keys already skipped in the snapshot
        the errors were met on), so a poison value rewritten every second is one line."""
        logged: set[object] = set(known)
        for error in errors:
            key = getattr(error, "key", None)
            if key not in logged:
                log.warning(
                    "skipping %s (ignored until rewritten; no data is at risk; fix what "
                    "writes it, docs/etcd-schema.md)",
                    error,
                )
                logged.add(key)
        self.malformed_total += len(errors)


class HolderSource(abc.ABC):
    """The reading half of a :class:`TopologySource`, over a :class:`SnapshotHolder`.

    Subclasses set ``_schema`` and ``_holder`` and implement ``start`` and ``close``.
    """

    _schema: KeySchema
    _holder: SnapshotHolder

    @abc.abstractmethod
    def start(self) -> None:
        """Begin following changes (see the subclass)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop following changes (see the subclass)."""

    @property
    def service(self) -> str:
        """The service name this source follows."""
        return self._schema.service

    @property
    def schema(self) -> KeySchema:
        """The service's key schema."""
        return self._schema

    @property
    def malformed_total(self) -> int:
        """Malformed records met since start (each logged once with its key)."""
        return self._holder.malformed_total

    def current(self) -> Topology:
        """The latest snapshot (lock-free, no I/O)."""
        return self._holder._topology  # the holder's current(), one call fewer per request

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(snapshot)`` on every new snapshot; returns an unsubscribe."""
        return self._holder.subscribe(callback)

    def wait_for(self, predicate: Callable[[Topology], bool], timeout: float = 10.0) -> Topology:
        """Block until ``predicate(snapshot)`` holds, or raise TopologyTimeout."""
        return self._holder.wait_for(predicate, timeout)

    def staleness(self) -> float:
        """Seconds since the source lost its live view (0.0 while live)."""
        return self._holder.staleness()

    @property
    def last_error(self) -> ShardRouteError | None:
        """Why the view is stale, or None while live."""
        return self._holder.last_error

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
