"""`shardroute top`: the fleet view (pure) and the command against a real etcd."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shardroute import cli
from shardroute.discovery.keys import KeySchema
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.etcd import EtcdClient
from shardroute.model import LoadReport, Shard, ShardState
from shardroute.telemetry.top import fleet, reason_line, render

CLI = [sys.executable, "-m", "shardroute.cli"]


def test_the_fleet_by_zone_with_load_against_capacity_and_drains() -> None:
    source = InMemoryTopologySource(
        "chat",
        [
            Shard("b", "h:2", zone="z2", capacity=10),
            Shard("a", "h:1", zone="z1", capacity=4),
            Shard("c", "h:3", zone="z2", capacity=10, state=ShardState.DRAINING),
        ],
    )
    source.put_load("a", LoadReport(inflight=3, queue_depth=2, sessions=7, latency_ms_p95=1.5))
    view = fleet(source.current())
    assert list(view["zones"]) == ["z1", "z2"]
    (a,) = view["zones"]["z1"]
    assert (a["inflight"], a["capacity"], a["load_pct"], a["queue"], a["sessions"]) == (
        3,
        4,
        75.0,
        2,
        7,
    )
    assert [row["id"] for row in view["zones"]["z2"]] == ["b", "c"]
    assert view["draining"] == ["c"]
    assert view["totals"] == {"shards": 3, "inflight": 3, "capacity": 24, "queue": 2, "sessions": 7}
    text = render(source.current())
    assert "draining: c" in text and "75.0" in text
    assert reason_line({"affinity": 5, "spill": 2}).startswith(
        "routing: affinity=5  memo=0  override=0  spill=2"
    )


def test_top_prints_a_json_line_per_change(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    etcd.put(schema.shard("a"), b'{"address": "h:1", "zone": "z1", "capacity": 8}')
    command = [*CLI, "top", "--etcd", etcd_endpoint, "--service", "chat", "--json"]
    with subprocess.Popen(
        [*command, "--updates", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert [row["id"] for row in first["zones"]["z1"]] == ["a"]
        etcd.put(schema.load("a"), b'{"inflight": 4, "sessions": 3}')
        second = json.loads(proc.stdout.readline())
        (a,) = second["zones"]["z1"]
        assert (a["inflight"], a["load_pct"], a["sessions"]) == (4, 50.0, 3)
        assert proc.wait(30) == 0  # --updates 2: done


def test_the_demo_metrics_port_reaches_serve_prometheus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The flag is checked before anything starts: a bad port is a clear error, exit 2.
    assert cli.main(["demo", "--metrics-port", "0"]) == 2
    assert "metrics port must be 1..65535" in capsys.readouterr().err
