"""Which load report counts (routing.fresh_loads and friends): pure, ``now`` injected.

docs/routing.md, "Load: three sources, freshest wins".
"""

from __future__ import annotations

import math

from shardroute.metadata import LOAD, format_load
from shardroute.model import LoadReport
from shardroute.routing import counts, fresh_loads, freshest, report_from_trailer

NOW = 1_800_000_000.0
AGE = 30.0


def test_a_fresh_report_counts_and_a_stale_one_does_not() -> None:
    assert counts(LoadReport(inflight=5, ts=NOW - 29.9), NOW, AGE)
    assert not counts(LoadReport(inflight=5, ts=NOW - 30.0), NOW, AGE)
    assert not counts(LoadReport(inflight=5, ts=NOW - 3600), NOW, AGE)


def test_a_report_without_ts_never_counts() -> None:
    assert not counts(LoadReport(inflight=5), NOW, AGE)
    assert fresh_loads({"a": LoadReport(inflight=5)}, {}, NOW, AGE) == ({}, math.inf)


def test_a_future_ts_is_bounded_by_the_max_age() -> None:
    ahead = LoadReport(inflight=5, ts=NOW + 10)  # a shard clock 10 s ahead: trusted
    assert counts(ahead, NOW, AGE)
    far = LoadReport(inflight=5, ts=NOW + 3600)  # hand-written, or a broken clock
    assert not counts(far, NOW, AGE)
    # it counts only inside [ts - max_age, ts + max_age]: 2 x max_age at most
    loads, due = fresh_loads({"a": far}, {}, NOW, AGE)
    assert loads == {} and due == NOW + 3600 - AGE
    assert fresh_loads({"a": far}, {}, due + 1, AGE)[0] == {"a": far}
    assert fresh_loads({"a": far}, {}, NOW + 3600 + AGE, AGE)[0] == {}


def test_stale_etcd_report_is_dropped_fresh_one_kept() -> None:
    stale = LoadReport(inflight=50, ts=NOW - 31)
    fresh = LoadReport(inflight=7, ts=NOW - 2)
    loads, due = fresh_loads({"old": stale, "new": fresh}, {}, NOW, AGE)
    assert loads == {"new": fresh}
    assert loads["new"] is fresh  # the report object itself: the router's table reuses it
    assert due == fresh.ts + AGE  # when "new" goes stale in turn


def test_trailer_beats_an_older_etcd_report() -> None:
    etcd = LoadReport(inflight=50, ts=NOW - 5)
    trailer = LoadReport(inflight=2, ts=NOW - 1)
    assert freshest(etcd, trailer, NOW, AGE) is trailer
    assert fresh_loads({"a": etcd}, {"a": trailer}, NOW, AGE)[0] == {"a": trailer}


def test_newer_etcd_report_beats_an_older_trailer() -> None:
    trailer = LoadReport(inflight=2, ts=NOW - 10)
    etcd = LoadReport(inflight=50, ts=NOW - 1)
    assert freshest(etcd, trailer, NOW, AGE) is etcd


def test_trailers_age_like_reports() -> None:
    etcd = LoadReport(inflight=9, ts=NOW - 20)
    trailer = LoadReport(inflight=1, ts=NOW - 15)
    assert freshest(etcd, trailer, NOW, AGE) is trailer
    assert freshest(None, trailer, NOW + 14, AGE) is trailer
    assert freshest(etcd, trailer, NOW + 15, AGE) is None  # both older than 30 s
    assert fresh_loads({"a": etcd}, {"a": trailer}, NOW + 15, AGE) == ({}, math.inf)


def test_a_future_etcd_ts_is_taken_as_now_against_a_trailer() -> None:
    ahead = LoadReport(inflight=50, ts=NOW + 20)  # within the bound: counts, as of now
    trailer = LoadReport(inflight=1, ts=NOW)
    assert freshest(ahead, trailer, NOW, AGE) is trailer  # a tie at now: the trailer
    assert freshest(ahead, LoadReport(inflight=1, ts=NOW - 1), NOW, AGE) is ahead


def test_next_change_is_the_earliest_expiry_or_start() -> None:
    reports = {
        "a": LoadReport(inflight=1, ts=NOW - 10),  # expires at NOW + 20
        "b": LoadReport(inflight=1, ts=NOW + 45),  # starts counting at NOW + 15
    }
    heard = {"c": LoadReport(inflight=1, ts=NOW - 25)}  # expires at NOW + 5
    loads, due = fresh_loads(reports, heard, NOW, AGE)
    assert set(loads) == {"a", "c"} and due == NOW + 5


def test_report_from_trailer() -> None:
    trailers = (("other", "x"), (LOAD, format_load(3, 2, 64)))
    report = report_from_trailer(trailers, NOW)
    assert report == LoadReport(inflight=3, queue_depth=2, ts=NOW)
    assert report_from_trailer((), NOW) is None
    assert report_from_trailer(None, NOW) is None
    assert report_from_trailer(((LOAD, "garbage"),), NOW) is None
    assert report_from_trailer(((LOAD, b"inflight=4"),), NOW) == LoadReport(inflight=4, ts=NOW)
    assert report_from_trailer(((LOAD, "inflight=" + "9" * 5000),), NOW) is None
