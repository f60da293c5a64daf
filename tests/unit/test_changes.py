"""Pure snapshot building: new values, never mutation; stale events dropped."""

from __future__ import annotations

from shardroute.discovery.changes import KeyChange, apply_changes, build_topology
from shardroute.discovery.keys import KeySchema
from shardroute.model import Topology

S = KeySchema("chat")


def shard(address: str = "h:1", **extra: object) -> bytes:
    import json

    return json.dumps({"address": address, **extra}).encode()


def test_apply_returns_new_snapshot_and_leaves_input_untouched() -> None:
    empty = Topology(service="chat")
    new, errors = apply_changes(empty, S, [KeyChange(S.shard("a"), shard(), 5)])
    assert errors == []
    assert list(new.shards) == ["a"] and new.revision == 5 and new.shards_revision == 5
    assert len(empty.shards) == 0 and empty.revision == 0


def test_shards_sorted_and_deletes_apply() -> None:
    t, _ = apply_changes(
        Topology(service="chat"),
        S,
        [KeyChange(S.shard(i), shard(), r) for r, i in enumerate(["c", "a", "b"], start=1)],
    )
    assert list(t.shards) == ["a", "b", "c"]
    t2, _ = apply_changes(t, S, [KeyChange(S.shard("b"), None, 4)])
    assert list(t2.shards) == ["a", "c"] and t2.revision == 4


def test_events_at_or_below_revision_are_dropped() -> None:
    t, _ = apply_changes(Topology(service="chat"), S, [KeyChange(S.shard("a"), shard(), 7)])
    again, _ = apply_changes(t, S, [KeyChange(S.shard("a"), None, 7)])
    assert again is t


def test_load_change_keeps_shards_object_and_revision() -> None:
    t, _ = apply_changes(Topology(service="chat"), S, [KeyChange(S.shard("a"), shard(), 1)])
    t2, _ = apply_changes(t, S, [KeyChange(S.load("a"), b'{"inflight": 4}', 2)])
    assert t2.shards is t.shards and t2.shards_revision == 1 and t2.revision == 2
    assert t2.loads["a"].inflight == 4


def test_malformed_value_is_skipped_counted_and_hides_nothing_else() -> None:
    changes = [
        KeyChange(S.shard("a"), shard(), 1),
        KeyChange(S.shard("bad"), b"{oops", 2),
        KeyChange(S.shard("b"), shard("h:2"), 3),
    ]
    t, errors = apply_changes(Topology(service="chat"), S, changes)
    assert list(t.shards) == ["a", "b"]
    assert [e.key for e in errors] == [S.shard("bad")]
    assert t.malformed == frozenset({S.shard("bad")})
    fixed, _ = apply_changes(t, S, [KeyChange(S.shard("bad"), shard("h:3"), 4)])
    assert "bad" in fixed.shards and fixed.malformed == frozenset()


def test_malformed_update_removes_previous_good_record() -> None:
    t, _ = apply_changes(Topology(service="chat"), S, [KeyChange(S.shard("a"), shard(), 1)])
    t2, errors = apply_changes(t, S, [KeyChange(S.shard("a"), b'{"address": 1}', 2)])
    assert "a" not in t2.shards and len(errors) == 1


def test_sessions_and_unknown_keys_are_ignored() -> None:
    t0 = Topology(service="chat")
    t, errors = apply_changes(
        t0, S, [KeyChange(S.session("x"), b"junk", 1), KeyChange(S.prefix + "zzz/q", b"?", 2)]
    )
    assert errors == [] and len(t) == 0 and t.malformed == frozenset()


def test_config_parsed_and_bad_config_keeps_previous() -> None:
    t, _ = apply_changes(
        Topology(service="chat"), S, [KeyChange(S.config, b'{"balance_factor": 1.5}', 1)]
    )
    assert t.config == {"balance_factor": 1.5}
    t2, errors = apply_changes(t, S, [KeyChange(S.config, b"nope", 2)])
    assert t2.config == {"balance_factor": 1.5} and len(errors) == 1
    t3, _ = apply_changes(t2, S, [KeyChange(S.config, None, 3)])
    assert t3.config is None


def test_build_keeps_shards_revision_when_shards_unchanged() -> None:
    items = [(S.shard("a"), shard()), (S.load("a"), b'{"inflight": 1}')]
    first, _ = build_topology(S, items, 10)
    again, _ = build_topology(S, items, 20, previous=first)
    assert again.revision == 20 and again.shards_revision == first.shards_revision
    assert again.shards is first.shards
    changed, _ = build_topology(S, [(S.shard("b"), shard())], 30, previous=first)
    assert list(changed.shards) == ["b"] and changed.shards_revision == 30


def test_overrides_only_when_asked_and_state_keys_ignored() -> None:
    override = b'{"owner": "s2", "epoch": 3}'
    changes = [
        KeyChange(S.session("conv"), override, 4),
        KeyChange(S.state("conv"), b"\x00binary", 5),
    ]
    plain, errors = apply_changes(Topology(service="chat"), S, changes)
    assert plain.overrides == {} and errors == [] and plain.revision == 5
    servers, errors = apply_changes(Topology(service="chat"), S, changes, include_sessions=True)
    assert errors == []
    assert servers.overrides["conv"].owner == "s2" and servers.overrides["conv"].epoch == 3
    assert servers.overrides["conv"].version == 4
    gone, _ = apply_changes(
        servers, S, [KeyChange(S.session("conv"), None, 6)], include_sessions=True
    )
    assert gone.overrides == {}
    bad, errors = apply_changes(
        servers, S, [KeyChange(S.session("x"), b'{"epoch": 1}', 7)], include_sessions=True
    )
    assert "x" not in bad.overrides and "owner" in errors[0].reason
