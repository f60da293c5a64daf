"""The demo's tally: a conversation idle past the shards' session TTL that starts again
at turn 1 expired (as documented), it lost no turn; one that comes back short sooner did."""

from __future__ import annotations

from shardroute.demo._traffic import Tally


def test_an_idle_conversation_that_restarts_expired() -> None:
    tally = Tally(idle_expiry_s=120.0)
    for held in (1, 2, 3):
        tally.record("s", "shard-a", held)
    tally.last_at["s"] -= 121.0  # idle past the TTL
    tally.record("s", "shard-a", 1)
    assert (tally.expired, tally.lost_turns) == (1, 0)
    tally.record("s", "shard-a", 2)
    assert tally.answered["s"] == 2


def test_a_short_history_within_the_ttl_is_lost_turns() -> None:
    tally = Tally(idle_expiry_s=120.0)
    for held in (1, 2, 3):
        tally.record("s", "shard-a", held)
    tally.record("s", "shard-b", 1)
    assert (tally.expired, tally.lost_turns) == (0, 3)
    without_ttl = Tally()
    for held in (1, 2, 1):
        without_ttl.record("t", "shard-a", held)
    assert (without_ttl.expired, without_ttl.lost_turns) == (0, 2)
