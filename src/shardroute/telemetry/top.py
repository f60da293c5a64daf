"""``shardroute top``: a live view of a service's fleet, read from etcd.

Shards grouped by zone with their state, load against capacity, queue, sessions and
latency; drains in progress; redrawn on each watch event. ``--json`` prints one line per
change instead (:func:`fleet`). The view is pure (:func:`fleet`, :func:`render`); only
:func:`run_top` follows a source.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Mapping
from typing import Any, TextIO

from shardroute.discovery.source import TopologySource
from shardroute.model import ShardState, Topology

__all__ = ["fleet", "reason_line", "render", "run_top"]

_CLEAR = "\x1b[H\x1b[2J"


def fleet(topology: Topology, staleness: float = 0.0) -> dict[str, Any]:
    """The fleet as plain data: shards by zone (id, state, in flight, capacity, load
    percent, queue, sessions, p95 latency), shards draining, totals."""
    zones: dict[str, list[dict[str, Any]]] = {}
    totals = {"shards": 0, "inflight": 0, "capacity": 0, "queue": 0, "sessions": 0}
    for shard in sorted(topology.shards.values(), key=lambda s: (s.zone, s.id)):
        load = topology.loads.get(shard.id)
        inflight = load.inflight if load else 0
        row = {
            "id": shard.id,
            "state": shard.state.value,
            "inflight": inflight,
            "capacity": shard.capacity,
            "load_pct": round(100.0 * inflight / shard.capacity, 1) if shard.capacity else 0.0,
            "queue": load.queue_depth if load else 0,
            "sessions": load.sessions if load else 0,
            "p95_ms": load.latency_ms_p95 if load else 0.0,
        }
        zones.setdefault(shard.zone or "-", []).append(row)
        totals["shards"] += 1
        totals["inflight"] += inflight
        totals["capacity"] += shard.capacity
        totals["queue"] += load.queue_depth if load else 0
        totals["sessions"] += load.sessions if load else 0
    draining = sorted(s.id for s in topology.shards.values() if s.state is ShardState.DRAINING)
    return {
        "service": topology.service,
        "revision": topology.revision,
        "staleness_s": round(staleness, 1),
        "zones": zones,
        "draining": draining,
        "totals": totals,
    }


def render(topology: Topology, staleness: float = 0.0) -> str:
    """The fleet as a terminal table (see :func:`fleet`)."""
    view = fleet(topology, staleness)
    totals = view["totals"]
    lines = [
        f"shardroute top  service={view['service']}  revision={view['revision']}  "
        f"shards={totals['shards']}  in flight={totals['inflight']}/{totals['capacity']}  "
        f"queue={totals['queue']}  sessions={totals['sessions']}"
        + (f"  STALE {view['staleness_s']}s" if staleness > 0 else ""),
        f"{'ZONE':8} {'SHARD':12} {'STATE':9} {'LOAD':>9} {'%':>6} {'QUEUE':>6} "
        f"{'SESSIONS':>8} {'P95 ms':>7}",
    ]
    for zone, rows in view["zones"].items():
        for row in rows:
            lines.append(
                f"{zone:8} {row['id']:12} {row['state']:9} "
                f"{row['inflight']:>4}/{row['capacity']:<4} {row['load_pct']:>6.1f} "
                f"{row['queue']:>6} {row['sessions']:>8} {row['p95_ms']:>7.1f}"
            )
    if view["draining"]:
        lines.append(f"draining: {', '.join(view['draining'])}")
    return "\n".join(lines)


def reason_line(stats: Mapping[str, int]) -> str:
    """Routed calls per routing reason, from a client's ``stats.snapshot()``."""
    reasons = ("affinity", "memo", "override", "spill", "zone_fallback", "failover", "redirect")
    return "routing: " + "  ".join(f"{r}={stats.get(r, 0)}" for r in reasons)


def run_top(
    source: TopologySource,
    *,
    as_json: bool,
    out: TextIO,
    updates: int | None = None,
    clear: bool = False,
) -> int:
    """Print the fleet of a started ``source`` now and on every change (``updates``:
    stop after that many views; None: until interrupted). Returns the exit code."""
    changes: queue.SimpleQueue[Topology] = queue.SimpleQueue()
    unsubscribe = source.subscribe(changes.put)
    shown = 0
    try:
        topology: Topology | None = source.current()
        last_revision = -1
        while updates is None or shown < updates:
            if topology is not None and topology.revision != last_revision:
                last_revision = topology.revision
                staleness = source.staleness()
                if as_json:
                    out.write(json.dumps(fleet(topology, staleness), separators=(",", ":")))
                else:
                    out.write((_CLEAR if clear else "") + render(topology, staleness) + "\n")
                out.write("\n")
                out.flush()
                shown += 1
            try:
                topology = changes.get(timeout=1.0)
            except queue.Empty:
                topology = None
    finally:
        unsubscribe()
    return 0
