"""`shardroute demo --tls`: the whole demo over mutual TLS with throwaway certificates,
the same summary (docs/security.md)."""

from __future__ import annotations

from dev_commands import demo_summary


def test_demo_over_mtls_loses_nothing() -> None:
    summary = demo_summary("--tls")
    assert summary["tls"] is True
    assert summary["requests"] > 0 and summary["errors"] == 0 and summary["lost_turns"] == 0
    assert summary["event_errors"] == []
    assert any("SIGKILL" in event for event in summary["events"])
    assert any("drain" in event for event in summary["events"])
