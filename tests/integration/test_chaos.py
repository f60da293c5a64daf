"""``shardroute demo --chaos`` in the suite, short: a partition, a slow shard, a kill, a
SIGSTOP, an etcd kill and restart and a compaction, one after the other, under live
conversations, against real shard processes and a real etcd (``shardroute.testing.chaos``,
issue 14); then with ``--etcd-cluster`` (3 members), with the loss of the etcd leader."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardroute.cli import main

SESSIONS = 4


def run_chaos_demo(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    """``shardroute demo --chaos [flags]``, short; its JSON summary (it exited 0)."""
    # --duration 6: faults held 3 s (the least the demo holds them), longer than a client
    # needs to notice a stop (~2 s); 0.3 s of settling after each fault converged
    argv = ["demo", "--chaos", *flags, "--duration", "6", "--sessions", str(SESSIONS)]
    code = main([*argv, "--json"])
    summary: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print(summary)
    assert code == 0
    return summary


def test_chaos_demo_loses_no_turn(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = run_chaos_demo(capsys)
    assert summary["lost_turns"] == 0
    faults = {fault["name"]: fault for fault in summary["faults"]}
    assert list(faults) == [
        "partition",
        "slow_shard",
        "kill",
        "stop",
        "etcd_restart",
        "compaction",
    ]
    hole = faults["partition"]["avoided_after_s"]  # a black hole, noticed by keepalive
    assert hole is not None and hole < 3.0, faults["partition"]
    assert faults["slow_shard"]["failed_turns_by_cause"] == {}, faults["slow_shard"]
    avoided = faults["kill"]["avoided_after_s"]  # the client stopped sending to it
    assert avoided is not None and avoided < 3.0, faults["kill"]
    for fault in faults.values():
        assert fault["converged_s"] is not None, fault
        assert fault["turns"] > 0
    # Only turns caught by a fault fail (in flight on a dead shard, a checkpoint cut by
    # the etcd outage): a few, never a stream of them. The bound on noticing a stopped
    # shard is asserted in test_faults_stop.py.
    assert summary["failed_turns"] == sum(summary["errors"].values())
    assert summary["failed_turns"] <= 3 * SESSIONS, summary["errors"]


def test_chaos_demo_on_an_etcd_cluster_includes_the_loss_of_its_leader(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--etcd-cluster``: etcd as 3 members; its leader is killed (the others elect a
    new one), then the whole cluster is restarted. Neither costs a turn: a checkpoint
    caught by the outage is settled and retried on the shard (checkpoint_retry_s)."""
    summary = run_chaos_demo(capsys, "--etcd-cluster")
    assert summary["lost_turns"] == 0
    faults = {fault["name"]: fault for fault in summary["faults"]}
    assert list(faults) == [
        "partition",
        "slow_shard",
        "kill",
        "stop",
        "etcd_leader_loss",
        "etcd_restart",
        "compaction",
    ]
    for name in ("etcd_leader_loss", "etcd_restart", "compaction"):
        assert faults[name]["failed_turns_by_cause"] == {}, faults[name]
        assert faults[name]["converged_s"] is not None, faults[name]
        assert faults[name]["turns"] > 0
