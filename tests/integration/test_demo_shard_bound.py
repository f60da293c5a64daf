"""`shardroute demo --shard-bound`: the demo's kill, add and drain with the shards checking
the balance bound for new sessions (routing.shard_bound, docs/routing.md)."""

from __future__ import annotations

from dev_commands import demo_summary


def test_demo_with_the_bound_at_the_shard_loses_nothing() -> None:
    summary = demo_summary("--shard-bound")
    assert summary["shard_bound"] is True
    assert summary["requests"] > 0 and summary["errors"] == 0 and summary["lost_turns"] == 0
    assert summary["event_errors"] == []
