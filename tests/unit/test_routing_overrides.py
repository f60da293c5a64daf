"""Router: a snapshot's session overrides (a client that follows them) place sessions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from shardroute.model import LoadReport, Override, Shard, ShardState, Topology
from shardroute.routing import Reason, Router

SHARDS = [Shard(id=f"s{i}", address=f"h{i}:1", capacity=10) for i in range(4)]
KEY = "conv-7"


def topo(
    overrides: Mapping[str, Override] | None = None,
    loads: Mapping[str, int] | None = None,
    shards: list[Shard] = SHARDS,
) -> Topology:
    t = Topology(
        service="chat",
        shards=MappingProxyType({s.id: s for s in shards}),
        loads=MappingProxyType({k: LoadReport(inflight=v) for k, v in (loads or {}).items()}),
    )
    return t if overrides is None else replace(t, overrides=MappingProxyType(dict(overrides)))


def owner_not_home(router: Router) -> str:
    home = router.route(KEY, topo()).home.id
    return next(s.id for s in SHARDS if s.id != home)


def test_a_session_with_an_override_goes_to_its_owner() -> None:
    r = Router()
    owner = owner_not_home(r)
    d = r.route(KEY, topo({KEY: Override(owner, 3)}))
    assert (d.shard.id, d.reason) == (owner, Reason.OVERRIDE)
    assert d.home.id != owner and owner not in {s.id for s in d.fallbacks}
    # other sessions are untouched, and nothing was written: no pin
    assert r.route("other", topo({KEY: Override(owner, 3)})).reason is Reason.AFFINITY
    assert r.pinned(KEY) is None


def test_the_override_wins_over_this_clients_own_pin() -> None:
    r = Router()
    owner = owner_not_home(r)
    third = next(s.id for s in SHARDS if s.id not in (owner, r.route(KEY, topo()).home.id))
    r.remember(KEY, third)  # this replica pinned it elsewhere (an older spill)
    d = r.route(KEY, topo({KEY: Override(owner, 2)}))
    assert (d.shard.id, d.reason) == (owner, Reason.OVERRIDE)
    r.settle(KEY, d)  # an override decision pins nothing, drops nothing
    assert r.pinned(KEY) == third


def test_the_override_gives_way_like_a_pin() -> None:
    r = Router()
    owner = owner_not_home(r)
    home = r.route(KEY, topo()).home.id
    ov = {KEY: Override(owner, 1)}
    # above the balance bound but under the standard ceiling (9 of 10): stays
    assert r.route(KEY, topo(ov, loads={owner: 8})).shard.id == owner
    # at the ceiling, excluded, draining or gone: the plan decides (home has room)
    for d in (
        r.route(KEY, topo(ov, loads={owner: 9})),
        r.route(KEY, topo(ov), excluded={owner}),
        r.route(
            KEY,
            replace(
                topo(ov),
                shards=MappingProxyType(
                    {
                        s.id: replace(s, state=ShardState.DRAINING) if s.id == owner else s
                        for s in SHARDS
                    }
                ),
            ),
        ),
        r.route(KEY, topo(ov, shards=[s for s in SHARDS if s.id != owner])),
    ):
        assert (d.shard.id, d.reason) == (home, Reason.AFFINITY)
    # an override naming a shard this client does not know: the plan decides
    assert r.route(KEY, topo({KEY: Override("gone", 4)})).reason is Reason.AFFINITY


def test_an_excluded_call_keeps_the_owner_and_fallbacks_skip_the_excluded() -> None:
    r = Router()
    owner = owner_not_home(r)
    home = r.route(KEY, topo()).home.id
    d = r.route(KEY, topo({KEY: Override(owner, 1)}), excluded={home})
    assert (d.shard.id, d.reason) == (owner, Reason.OVERRIDE)
    assert home not in {s.id for s in d.fallbacks}
