"""`shardroute demo --tls`: the whole demo over mutual TLS with throwaway certificates,
the same summary (docs/security.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_over_mtls_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardroute.cli", "demo", "--tls", "--duration", "6", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["tls"] is True
    assert summary["requests"] > 0 and summary["errors"] == 0 and summary["lost_turns"] == 0
    assert summary["event_errors"] == []
    assert any("SIGKILL" in event for event in summary["events"])
    assert any("drain" in event for event in summary["events"])
