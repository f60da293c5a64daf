"""`shardroute scale-advice` against a real etcd (records written by hand, as etcdctl would)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.testing.etcd import free_port

CLI = [sys.executable, "-m", "shardroute.cli"]


def fleet(etcd: EtcdClient, schema: KeySchema, queue: int, inflight: int = 0) -> None:
    now = time.time()
    for i, cost in enumerate(["1", "3", "1", "2"]):
        record = {
            "address": f"h:{7000 + i}",
            "zone": "ab"[i % 2],
            "capacity": 10,
            "labels": {"capacity_class": "on-demand", "cost_per_hour": cost},
        }
        etcd.put(schema.shard(f"s{i}"), json.dumps(record).encode())
        load = {"inflight": inflight, "queue_depth": queue, "sessions": i, "ts": now}
        etcd.put(schema.load(f"s{i}"), json.dumps(load).encode())


def advise(etcd_endpoint: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*CLI, "scale-advice", "--etcd", etcd_endpoint, "--service", "chat", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_json_advice_scales_up_on_queue_with_reasons(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    fleet(etcd, schema, queue=6)
    result = advise(etcd_endpoint, "--json", "--queue-target", "2")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    data = json.loads(line)
    assert data["service"] == "chat"
    assert data["current_shards"] == 4 and data["desired_shards"] == 12
    assert data["direction"] == "up" and len(data["additions"]) == 8
    assert data["per_zone"] == {"a": 6, "b": 6}
    assert any(r.startswith("queue: queue 6.0/shard") for r in data["reasons"])
    assert {v["policy"] for v in data["votes"]} == {"queue", "predictive", "cost"}


def test_text_advice_drains_the_costliest_first(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    fleet(etcd, schema, queue=0)
    result = advise(etcd_endpoint, "--target-utilisation", "0.5", "--min-shards", "2")
    assert result.returncode == 0, result.stderr
    assert "chat: 4 active -> 2 desired (down)" in result.stdout
    assert "drain, in order: s1, s3" in result.stdout  # cost 3, then cost 2
    assert "utilisation: utilisation 0% vs target 50%" in result.stdout


def test_watch_serves_the_desired_shards_gauge(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    fleet(etcd, schema, queue=6)
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "scale-advice",
            "--etcd",
            etcd_endpoint,
            "--service",
            "chat",
            "--watch",
            "--json",
            "--interval",
            "0.2",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["desired_shards"] == 12
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue  # not listening yet
            lines = [ln for ln in text.splitlines() if ln.startswith("shardroute_desired_shards")]
            if lines:
                break
        # The exporter adds its otel_scope_* labels; the zone label and value are ours.
        points = {re.search(r'zone="(\w*)"', ln).group(1): ln.split()[-1] for ln in lines}  # type: ignore[union-attr]
        assert points == {"a": "6.0", "b": "6.0"}
        signals = {
            ln.split("{")[0]: ln.split()[-1]
            for ln in text.splitlines()
            if ln.startswith("shardroute_fleet_")
        }
        assert signals["shardroute_fleet_active_shards"] == "4.0", signals
    finally:
        proc.terminate()
        proc.wait(10)
