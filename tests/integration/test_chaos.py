"""``shardroute demo --chaos`` in the suite, short: a kill, a SIGSTOP, an etcd kill and
restart and a compaction, one after the other, under live conversations, against real
shard processes and a real etcd (``shardroute.testing.chaos``, issue 14)."""

from __future__ import annotations

import json

import pytest

from shardroute.cli import main

SESSIONS = 4


def test_chaos_demo_loses_no_turn_and_fails_only_turns_in_flight(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["demo", "--chaos", "--duration", "8", "--sessions", str(SESSIONS), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print(summary)
    assert code == 0
    assert summary["lost_turns"] == 0
    faults = {fault["name"]: fault for fault in summary["faults"]}
    assert list(faults) == ["kill", "stop", "etcd_restart", "compaction"]
    for name in ("kill", "stop"):  # the client stopped sending to the faulty shard
        avoided = faults[name]["avoided_after_s"]
        assert avoided is not None and avoided < 6.0, faults[name]
    for fault in faults.values():
        assert fault["converged_s"] is not None, fault
        assert fault["turns"] > 0
        # At most the turns in flight when the fault hit fail (outcome unknown).
        assert sum(fault["failed_turns_by_cause"].values()) <= SESSIONS, fault
    assert summary["failed_turns"] == sum(summary["errors"].values())
