"""Which load report counts for a shard: the freshest of its etcd report and the load it
last attached to a response (its trailer), each ignored once older than the max age.

Pure: ``now`` is an input (unix seconds, the client's clock), nothing here reads a
clock. The client applies :func:`fresh_loads` to each topology snapshot off the hot
path and hands the router a snapshot whose ``loads`` already carry the decision
(docs/routing.md, "Load: three sources, freshest wins").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from shardroute import metadata
from shardroute.model import LoadReport

__all__ = ["counts", "fresh_loads", "freshest", "report_from_trailer"]


def counts(report: LoadReport, now: float, max_age: float) -> bool:
    """Whether ``report`` is recent enough to count at ``now``: its ``ts`` is within
    ``max_age`` seconds of ``now``, in either direction. A ``ts`` further in the future
    (a shard clock far ahead, a hand-written value) is not trusted, so no report counts
    for more than ``2 * max_age`` seconds in all; a report without ``ts`` (0) never
    counts."""
    return now - max_age < report.ts < now + max_age


def freshest(
    etcd: LoadReport | None, heard: LoadReport | None, now: float, max_age: float
) -> LoadReport | None:
    """The report that counts for one shard at ``now``, or None (load unknown: 0).

    Of the two that :func:`counts`, the one measured last wins; a ``ts`` ahead of
    ``now`` is taken as ``now`` for that comparison (clock skew), and on a tie the
    trailer (``heard``, stamped by this client when the response arrived) wins.
    """
    if etcd is not None and not counts(etcd, now, max_age):
        etcd = None
    if heard is not None and not counts(heard, now, max_age):
        heard = None
    if etcd is None or heard is None:
        return heard if etcd is None else etcd
    return etcd if min(etcd.ts, now) > min(heard.ts, now) else heard


def _next_change(report: LoadReport | None, now: float, max_age: float) -> float:
    """When whether ``report`` counts changes next (after ``now``), or inf."""
    if report is None or report.ts <= 0:
        return math.inf
    if report.ts - max_age > now:  # too far ahead: starts counting then
        return report.ts - max_age
    expiry = report.ts + max_age
    return expiry if expiry > now else math.inf


def fresh_loads(
    reports: Mapping[str, LoadReport],
    heard: Mapping[str, LoadReport],
    now: float,
    max_age: float,
) -> tuple[dict[str, LoadReport], float]:
    """The loads to route on at ``now``: for every shard with a report that counts,
    the :func:`freshest` of its etcd report (``reports``) and its trailer (``heard``);
    shards with neither are left out (their reported load is 0).

    Returns the loads and the first time after ``now`` at which the answer changes on
    its own (a report expires, or a future one starts counting), inf if never: until
    then the same loads hold unless new reports arrive.
    """
    out: dict[str, LoadReport] = {}
    due = math.inf
    for shard_id in reports.keys() | heard.keys():
        etcd, trailer = reports.get(shard_id), heard.get(shard_id)
        chosen = freshest(etcd, trailer, now, max_age)
        if chosen is not None:
            out[shard_id] = chosen
        due = min(due, _next_change(etcd, now, max_age), _next_change(trailer, now, max_age))
    return out, due


def report_from_trailer(
    trailers: Iterable[tuple[str, str | bytes]] | None, received: float
) -> LoadReport | None:
    """The load of a :data:`~shardroute.metadata.LOAD` trailer as a report measured at
    ``received`` (a trailer is as fresh as its response), or None without one."""
    text = metadata.get(trailers, metadata.LOAD)
    if text is None:
        return None
    try:
        parts = metadata.parse_load(text)
    except ValueError:  # an integer too long to convert
        return None
    if "inflight" not in parts:
        return None
    return LoadReport(inflight=parts["inflight"], queue_depth=parts.get("queue", 0), ts=received)
