"""`shardroute demo --autoscale`: the summary's scaling fields, no lost turn (a short run;
the autoscaler's behaviour itself is asserted in test_autoscaling.py)."""

from __future__ import annotations

from shardroute.demo._autoscale import run_autoscale_demo, workers_at
from shardroute.demo._config import DemoConfig


def test_the_schedule_ramps_peaks_and_falls() -> None:
    shape = [workers_at(i / 20, 9) for i in range(21)]
    assert shape[0] == 1 and max(shape) == 9 and shape[-1] == 1
    peak = shape.index(9)
    assert shape[:peak] == sorted(shape[:peak])
    assert shape[peak:] == sorted(shape[peak:], reverse=True)


def test_a_short_autoscaling_demo_loses_no_turn() -> None:
    summary = run_autoscale_demo(DemoConfig(duration_s=10, sessions=30, workers=6), live=None)
    assert summary["lost_turns"] == 0
    # The demo's clients retry a refused turn 3 times with a short backoff; on a machine
    # loaded enough, a turn can still fail after them: that is an error, not a lost turn.
    assert summary["errors"] <= max(2, summary["requests"] // 100), summary
    assert summary["requests"] > 0
    assert summary["max_shards"] >= 2
    assert summary["scale_ups"] == len(summary["added"])
    assert summary["scale_downs"] == len(summary["drained"])
