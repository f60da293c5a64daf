"""The loads a client routes on: each shard's etcd report or its latest load trailer,
whichever is freshest, with reports older than the max age left out.

The call loops drop the trailing metadata of the first call to each shard since the
last merge into :attr:`LoadBoard.inbox` (one dict test per call, and one dict store per
shard per merge; nothing is parsed; later calls to that shard skip reading trailers:
docs/benchmarks.md, "Trailers, sampled"). The rest happens
at most every :data:`MERGE_EVERY_S` on the call path, or when a new topology snapshot
arrives: the trailers heard since are read and parsed, stamped with the time of the
previous merge (a lower bound of when they arrived), merged with the snapshot's reports
by :func:`shardroute.routing.fresh_loads` (pure), and the result is published as a new
snapshot (the source's, with ``loads`` replaced) in one reference swap. The router
gets that snapshot, so its decision stays a pure function of its input, and a load
that did not change keeps its report object, so the router's table is rebuilt only
for what moved (docs/routing.md, "Load: three sources, freshest wins").
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from shardroute.model import LoadReport, Topology
from shardroute.routing import fresh_loads, freshest, report_from_trailer

__all__ = ["MERGE_EVERY_S", "LoadBoard"]

_NOTHING = Topology("")  # the view before the first snapshot (never routed on)

MERGE_EVERY_S = 0.05
"""How often, at most, trailers heard since the last merge reach the router's view
while calls flow (the merge runs on the first call after this much time)."""


def _trailers(heard: Any) -> Any:
    """The trailing metadata of what :meth:`LoadBoard.heard` got: a finished call object
    (grpc's sync call, or grpc.aio's, whose ``trailing_metadata()`` is a coroutine that
    returns at once once the call is done), or the metadata itself. None if unknown."""
    getter = getattr(heard, "trailing_metadata", None)
    if getter is None:
        return heard
    try:
        found = getter()
        if inspect.iscoroutine(found):
            try:
                found.send(None)
            except StopIteration as done:
                return done.value
            found.close()  # not finished after all: nothing to read
            return None
        return found
    except Exception:  # a call object that cannot say: no load heard
        return None


class LoadBoard:
    """Trailers heard per shard and the snapshot the router routes on.

    Mutable state: :attr:`inbox` (shard id → the trailers, or a finished call object,
    heard since the last drain, written by the call loops and :meth:`heard` without a
    lock, swapped for an empty dict by the drain), and under ``_lock``: ``_trailers``
    (the latest trailer load of each shard, parsed), ``_changed`` (shards whose
    trailer changed since the last view),
    ``_drained_at`` (unix time of the last drain: what was heard after it is stamped
    with it at the next), ``_ageing_due`` and :attr:`state`, replaced whole. Readers
    read :attr:`state` once and never lock.

    Args:
        max_age: the max report age in force (``RoutingPolicy.max_report_age_s``).
        on_change: called with each new view, under the board's lock, before it is
            published (the client prepares its router and rebases its in-flight counts).
        clock: unix seconds (inject in tests): the trailers' time and the age of reports.
    """

    __slots__ = (
        "_ageing_due",
        "_changed",
        "_drained_at",
        "_lock",
        "_max_age",
        "_on_change",
        "_trailers",
        "clock",
        "inbox",
        "state",
    )

    def __init__(
        self,
        max_age: Callable[[], float],
        on_change: Callable[[Topology], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_age = max_age
        self._on_change = on_change
        self.clock = clock
        self._lock = threading.Lock()
        self.inbox: dict[str, Any] = {}
        """Shard id → what was heard from it since the last merge (trailing metadata, or
        a finished call object): written without a lock, replaced whole by each merge. A
        call loop reads it before a call, asks for the call's trailers only when its
        shard is not in it, and stores them after (in the dict it read: one that a merge
        replaced meanwhile is dropped, and the next call asks again)."""
        self._drained_at = clock()
        self._trailers: dict[str, LoadReport] = {}
        self._changed: set[str] = set()
        self._ageing_due = -math.inf
        self.state: tuple[Topology | None, float, Topology] = (None, -math.inf, _NOTHING)
        """(the source snapshot the view was made from, when the view must be looked
        at again, the view): one tuple, swapped whole."""

    @property
    def routing_view(self) -> Topology:
        """The last snapshot made to route on (the source's, with the loads that count)."""
        return self.state[2]

    def heard(self, shard_id: str, call: Any) -> None:
        """A call to ``shard_id`` succeeded: ``call`` is its finished call object (or
        its trailing metadata). Hot path: one dict store, nothing read. One that lands
        while a drain swaps the inbox may be lost: the next one counts."""
        self.inbox[shard_id] = call

    def view(self, topology: Topology, now: float) -> Topology:
        """The snapshot to route on for ``topology`` (the source's current one) at
        ``now``: the published view while it is still good for them, else a new one
        made now. Never waits: while another thread makes one, the last view is used."""
        base, due, view = self.state
        if topology is base and now < due:
            return view
        if not self._lock.acquire(blocking=False):
            return topology if base is None else view
        try:
            return self._merge(topology, now)
        finally:
            self._lock.release()

    def adopt(self, topology: Topology) -> Topology:
        """Make the view of a new source snapshot now (from the thread that receives
        them; waits for a merge in progress)."""
        with self._lock:
            return self._merge(topology, self.clock())

    def forget(self, shard_ids: Collection[str]) -> None:
        """Drop the trailers of shards that left the topology."""
        with self._lock:
            for shard_id in shard_ids:
                self.inbox.pop(shard_id, None)
                self._trailers.pop(shard_id, None)

    def heard_loads(self) -> dict[str, LoadReport]:
        """The latest trailer load of each shard, parsed (for tools and tests)."""
        with self._lock:
            self._drain(self.clock())
            return dict(self._trailers)

    def _drain(self, now: float) -> None:
        """Parse what was heard since the last drain into ``_trailers``, stamped with
        the time of that drain: each arrived after it, and at most this long ago."""
        inbox, self.inbox = self.inbox, {}
        stamp, self._drained_at = self._drained_at, now
        trailers = self._trailers
        for shard_id, call in list(inbox.items()):  # a late heard() may still add one
            try:
                report = report_from_trailer(_trailers(call), stamp)
            except Exception:  # not metadata after all: nothing heard
                continue
            if report is not None:
                trailers[shard_id] = report
                self._changed.add(shard_id)

    def _merge(self, topology: Topology, now: float) -> Topology:
        self._drain(now)
        changed, self._changed = self._changed, set()
        base, _, view = self.state
        max_age = self._max_age()
        shards, reports, trailers = topology.shards, topology.loads, self._trailers
        if topology is not base or now >= self._ageing_due:  # everything again: O(shards)
            heard = {k: r for k, r in trailers.items() if k in shards}
            loads, self._ageing_due = fresh_loads(reports, heard, now, max_age)
            moved = len(loads) != len(view.loads) or any(
                view.loads.get(k) is not r for k, r in loads.items()
            )
        else:  # only the trailers heard since: O(those shards)
            loads = dict(view.loads)
            for shard_id in changed & shards.keys():
                report = freshest(reports.get(shard_id), trailers[shard_id], now, max_age)
                if report is None:
                    loads.pop(shard_id, None)
                else:
                    loads[shard_id] = report
                    self._ageing_due = min(self._ageing_due, report.ts + max_age)
            moved = any(view.loads.get(k) is not loads.get(k) for k in changed)
        # while calls flow, look again soon: trailers heard meanwhile wait at most that
        due = min(self._ageing_due, now + MERGE_EVERY_S)
        if base is topology and not moved:
            self.state = (base, due, view)  # nothing moved: the router keeps its table
            return view
        view = replace(topology, loads=MappingProxyType(loads))
        self._on_change(view)
        self.state = (topology, due, view)
        return view
