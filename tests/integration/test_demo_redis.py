"""`shardroute demo --store redis`: the same scenario with conversation state in an
embedded redis-server beside the embedded etcd; nothing answered is lost, and every
process it started is gone afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

from test_demo import processes_in_session

CLI = [sys.executable, "-m", "shardroute.cli", "demo"]


def test_demo_on_the_redis_store() -> None:
    proc = subprocess.Popen(
        [*CLI, "--duration", "6", "--json", "--store", "redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["session_store"] == "redis"
    assert summary["lost_turns"] == 0, summary
    assert summary["shards_killed"] == 1 and summary["shards_drained"] == 1, summary
    # turns answered (a loaded machine makes some fail while shards come and go; a store
    # that does not work fails them all)
    assert summary["requests"] - summary["errors"] > 50, summary
    assert summary["redis_used_memory_mb"] > 0
    assert any("session store: Redis" in event for event in summary["events"])
    assert processes_in_session(proc.pid) == []
