"""The router writes nothing: only a call that went somewhere changes the memo."""

from __future__ import annotations

from types import MappingProxyType

from shardroute.model import LoadReport, Shard, Topology
from shardroute.routing import Reason, Router


def zoned(loads: dict[str, int]) -> Topology:
    shards = [
        Shard(id=f"{zone}-{i}", address="x", zone=zone, region="r1", capacity=10)
        for zone in ("z1", "z2")
        for i in range(2)
    ]
    return Topology(
        service="chat",
        shards=MappingProxyType({s.id: s for s in shards}),
        loads=MappingProxyType({k: LoadReport(inflight=v) for k, v in loads.items()}),
    )


def test_asking_where_batch_would_go_does_not_pin_the_session() -> None:
    """Regression (issue 10): route(key, "batch") used to pin a session that would spill,
    so route(key, "standard") then answered "memo" on the other zone's shard."""
    r = Router()
    key = "conversation-7"
    home = r.route(key, zoned({}), zone="z1").home.id
    # z1 at 8 of 10 (over batch's 7, under standard's 9 and the balance bound), z2 at 6
    t = zoned({"z1-0": 8, "z1-1": 8, "z2-0": 6, "z2-1": 6})
    batch = r.route(key, t, priority="batch", zone="z1")
    assert batch.reason is Reason.ZONE_FALLBACK and batch.shard.zone == "z2"
    standard = r.route(key, t, priority="standard", zone="z1")
    assert standard.reason is Reason.AFFINITY and standard.shard.id == home
    assert r.pinned(key) is None and len(r.memo) == 0
    # once a batch call really went there, the session follows its context
    r.settle(key, batch)
    assert r.route(key, t, priority="standard", zone="z1").shard == batch.shard


def test_memo_refresh_happens_only_when_a_call_is_settled() -> None:
    now = [0.0]
    r = Router(clock=lambda: now[0])
    t = zoned({})
    key = "k"
    home = r.route(key, t).home.id
    target = next(s for s in t.shards if s != home)
    r.remember(key, target)  # pinned at 0, renewable after 1800 s, expires at 3600 s
    now[0] = 2000.0
    d = r.route(key, t)
    assert d.reason is Reason.MEMO
    assert r.memo.pins[key][2] == 3600.0  # route() did not renew it
    r.settle(key, d)
    assert r.memo.pins[key][2] == 5600.0  # the call did
