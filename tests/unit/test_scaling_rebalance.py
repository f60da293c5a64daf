"""The rebalance plan: pure, on hand-made holdings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shardroute.scaling.rebalance import HeldSession, imbalance, plan_moves


def holdings(counts: dict[str, int]) -> dict[str, list[HeldSession]]:
    return {
        sid: [HeldSession(f"{sid}-k{i}", sid, 100 + i, float(i)) for i in range(n)]
        for sid, n in counts.items()
    }


def test_a_returned_shard_gets_its_home_sessions_back_first() -> None:
    held = holdings({"a": 30, "b": 30, "c": 0})
    homes = {"a-k20": "c", "b-k25": "c", "b-k1": "c"}
    moves = plan_moves(held, ["a", "b", "c"], homes.get, max_moves=100)
    assert len(moves) == 20 and {m.target for m in moves} == {"c"}
    first = [m.session_key for m in moves[:3]]
    assert sorted(first) == ["a-k20", "b-k1", "b-k25"]
    assert all(m.reason == "back to its ring home" for m in moves[:3])
    # Then the longest idle (lowest last_used), smallest first, alternately from a and b.
    assert moves[3].reason == "idle and small, to the emptiest shard"
    assert moves[3].session_key in ("a-k0", "b-k0")


def test_the_budget_bounds_the_churn_and_balanced_fleets_do_not_move() -> None:
    held = holdings({"a": 50, "b": 10})
    assert len(plan_moves(held, ["a", "b"], lambda k: None, max_moves=5)) == 5
    assert plan_moves(holdings({"a": 11, "b": 10}), ["a", "b"], lambda k: None, 100) == ()
    assert plan_moves(holdings({"a": 9}), ["a"], lambda k: None, 100) == ()


def test_sessions_on_a_draining_shard_are_left_to_its_drain() -> None:
    held = holdings({"a": 10, "b": 10, "d": 40})
    assert plan_moves(held, ["a", "b"], lambda k: None, 100) == ()


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 60), min_size=2))
def test_unbounded_plans_reach_max_at_most_ceil_average(counts: dict[str, int]) -> None:
    held = holdings(counts)
    moves = plan_moves(held, list(counts), lambda k: None, max_moves=10_000)
    after = dict(counts)
    for m in moves:
        after[m.source] -= 1
        after[m.target] += 1
    total = sum(counts.values())
    assert sum(after.values()) == total
    assert max(after.values()) <= -(-total // len(counts))
    assert len({m.session_key for m in moves}) == len(moves)  # no session moved twice
    if total >= 4 * len(counts):
        assert imbalance(after) <= 1.25
