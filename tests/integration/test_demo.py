"""`shardroute demo`: the README's first command, end to end, and its cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

CLI = [sys.executable, "-m", "shardroute.cli", "demo"]


def processes_in_session(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    found.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def test_demo_json_summary_and_cleanup() -> None:
    proc = subprocess.Popen(
        [*CLI, "--duration", "6", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    for key in (
        "requests",
        "errors",
        "failovers",
        "spills",
        "affinity_hit_rate",
        "shards_killed",
        "duration_s",
        "lost_turns",
        "sessions_migrated",
        "redirects",
    ):
        assert key in summary
    assert summary["requests"] > 100
    assert summary["shards_killed"] == 1 and summary["shards_drained"] == 1
    assert summary["shards_added"] == 1
    assert summary["errors"] == 0
    assert summary["lost_turns"] == 0  # a kill, a drain and a scale-up lose no answered turn
    assert summary["sessions_migrated"] > 0
    assert 0.5 < summary["affinity_hit_rate"] <= 1.0
    assert 5.5 < summary["duration_s"] < 30
    # etcd's space, sampled every second: compacted, far from the quota, no alarm.
    assert 0 < summary["etcd_db_mb_peak"] < 64
    assert summary["etcd_nospace"] is False
    assert summary["conversations_ended"] > 0  # conversations end (end_session) and restart
    # a checkpoint writes about one turn (~0.3 KB), not the whole history
    assert 0 < summary["store_bytes_written_per_turn"] < 2048
    assert summary["event_errors"] == []
    events = " | ".join(summary["events"])
    assert "SIGKILL" in events and "added" in events and "drain" in events
    assert processes_in_session(proc.pid) == []  # etcd and every shard are gone


def test_demo_ctrl_c_cleans_up() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: run so (CI in the background), the demo would never see the
    # Ctrl-C. So the demo starts with SIGINT's default disposition, as from a terminal
    # (a handler, unlike an ignore, is reset to the default at exec).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [*CLI, "--duration", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("etcd db "):
            break  # the live view is up (its etcd line too): etcd and shards run
    assert len(processes_in_session(proc.pid)) >= 5  # demo, etcd, 4 shards
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert processes_in_session(proc.pid) == []
