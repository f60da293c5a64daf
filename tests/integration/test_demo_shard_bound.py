"""`shardroute demo --shard-bound`: the demo's kill, add and drain with the shards checking
the balance bound for new sessions (routing.shard_bound, docs/routing.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_with_the_bound_at_the_shard_loses_nothing() -> None:
    command = ["demo", "--shard-bound", "--duration", "6", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "shardroute.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["shard_bound"] is True
    assert summary["requests"] > 0 and summary["errors"] == 0 and summary["lost_turns"] == 0
    assert summary["event_errors"] == []
