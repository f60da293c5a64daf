"""LoadBoard: trailers heard on the call path, merged with the etcd reports into the
snapshot the router routes on (clock injected; no network)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from shardroute.metadata import LOAD, format_load
from shardroute.model import LoadReport, Shard, Topology
from shardroute.transport.loadboard import MERGE_EVERY_S, LoadBoard

NOW = 1_800_000_000.0
AGE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def topology(loads: Mapping[str, LoadReport], revision: int = 1) -> Topology:
    shards = {i: Shard(i, f"{i}:1") for i in ("a", "b")}
    return Topology("t", revision, MappingProxyType(shards), MappingProxyType(dict(loads)))


def board() -> tuple[LoadBoard, Clock, list[Topology]]:
    clock = Clock()
    views: list[Topology] = []
    return LoadBoard(lambda: AGE, views.append, clock), clock, views


def trailer(inflight: int, queue: int = 0) -> tuple[tuple[str, str], ...]:
    return ((LOAD, format_load(inflight, queue, 64)),)


class SyncCall:
    """A finished grpc call object: ``trailing_metadata()`` returns the trailers."""

    def __init__(self, trailers: object) -> None:
        self.trailers = trailers

    def trailing_metadata(self) -> object:
        if isinstance(self.trailers, Exception):
            raise self.trailers
        return self.trailers


class AioCall(SyncCall):
    """A finished grpc.aio call object: ``trailing_metadata()`` is a coroutine."""

    async def trailing_metadata(self) -> object:  # type: ignore[override]
        return self.trailers


def test_stale_reports_leave_the_view_when_they_expire() -> None:
    b, _, views = board()
    fresh = LoadReport(inflight=4, ts=NOW - 10)
    t = topology({"a": LoadReport(inflight=60, ts=NOW - 31), "b": fresh})
    view = b.adopt(t)
    assert dict(view.loads) == {"b": fresh} and views == [view]
    assert view.shards is t.shards and view.revision == t.revision
    assert b.view(t, NOW + 19) is view  # still good: nothing recomputed
    later = b.view(t, NOW + 20)  # "b" is 30 s old now
    assert dict(later.loads) == {} and views == [view, later]


def test_a_trailer_reaches_the_view_at_the_next_merge() -> None:
    b, clock, views = board()
    t = topology({"a": LoadReport(inflight=60, ts=NOW - 5)})
    view = b.adopt(t)
    clock.now = later = NOW + MERGE_EVERY_S / 2
    b.heard("a", SyncCall(trailer(3, 1)))  # fresher than the etcd report
    b.heard("b", AioCall(trailer(2)))
    assert b.view(t, later) is view  # within the merge interval: the same view
    # stamped with the time of the previous merge: they arrived after it
    assert b.heard_loads() == {
        "a": LoadReport(inflight=3, queue_depth=1, ts=NOW),
        "b": LoadReport(inflight=2, ts=NOW),
    }
    b.adopt(t)  # a snapshot arriving merges what was heard at once
    merged = b.view(t, later)
    assert {k: (r.inflight, r.queue_depth) for k, r in merged.loads.items()} == {
        "a": (3, 1),
        "b": (2, 0),
    }
    # nothing moved since: same view, the router keeps its table
    assert b.view(t, later + MERGE_EVERY_S) is merged and views[-1] is merged


def test_trailers_merge_on_the_call_path_within_the_merge_interval() -> None:
    b, _, _ = board()
    t = topology({})
    view = b.adopt(t)
    b.heard("a", trailer(9))
    assert b.view(t, NOW + MERGE_EVERY_S / 2) is view  # merged at most every interval
    first = b.view(t, NOW + MERGE_EVERY_S)
    assert first.loads["a"].inflight == 9
    b.heard("a", trailer(1))
    assert b.view(t, NOW + MERGE_EVERY_S * 1.5) is first
    assert b.view(t, NOW + MERGE_EVERY_S * 2).loads["a"].inflight == 1


def test_trailers_of_unknown_shards_are_ignored_and_forgotten() -> None:
    b, _, _ = board()
    t = topology({})
    b.heard("gone", trailer(5))
    b.heard("a", ())  # no load trailer (not a ShardServer): nothing
    assert dict(b.adopt(t).loads) == {}
    b.forget(["gone", "a"])
    assert b.heard_loads() == {}


def test_a_new_topology_gets_a_new_view() -> None:
    b, _, views = board()
    first = b.adopt(topology({}))
    t2 = topology({"a": LoadReport(inflight=1, ts=NOW)}, revision=2)
    second = b.view(t2, NOW)
    assert second is not first and second.revision == 2 and second.loads["a"].inflight == 1
    assert views == [first, second]


def test_the_call_path_never_waits_for_a_merge_in_progress() -> None:
    b, _, _ = board()
    t = topology({})
    view = b.adopt(t)
    t2 = topology({"a": LoadReport(inflight=1, ts=NOW)}, revision=2)
    with b._lock:  # another thread merging
        assert b.view(t2, NOW) is view  # the last view, as if the call came a moment earlier
    assert b.view(t2, NOW).revision == 2


def test_a_call_object_that_cannot_say_gives_no_load() -> None:
    b, _, _ = board()
    b.heard("a", SyncCall(RuntimeError("call object torn down")))
    b.heard("b", object())  # neither a call nor metadata
    assert dict(b.adopt(topology({})).loads) == {}


def test_a_trailer_heard_long_ago_is_stamped_no_later_than_the_merge_before_it() -> None:
    b, clock, _ = board()
    t = topology({})
    b.adopt(t)  # a merge at NOW
    b.heard("a", SyncCall(trailer(7)))  # then no call for a minute
    clock.now = NOW + 60
    assert dict(b.adopt(t).loads) == {}  # 60 s old at most, and the max age is 30: ignored
    b.heard("a", SyncCall(trailer(7)))
    clock.now = NOW + 60.01
    assert b.adopt(t).loads["a"] == LoadReport(inflight=7, ts=NOW + 60)
