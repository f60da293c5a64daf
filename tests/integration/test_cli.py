"""`shardroute topology` against a real etcd."""

from __future__ import annotations

import json
import subprocess
import sys

from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.testing.etcd import free_port

CLI = [sys.executable, "-m", "shardroute.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_topology_json_is_one_line_with_documented_fields(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    etcd.put(schema.shard("b"), b'{"address": "h:2", "zone": "z2", "labels": {"gpu": "l4"}}')
    etcd.put(schema.shard("a"), b'{"address": "h:1", "capacity": 4}')
    etcd.put(schema.load("a"), b'{"inflight": 3, "ts": 12.5}')
    result = run("topology", "--etcd", etcd_endpoint, "--service", "chat", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["revision"] == etcd.revision()
    assert [s["id"] for s in data["shards"]] == ["a", "b"]
    a, b = data["shards"]
    assert set(a) == {
        "id", "address", "zone", "region", "weight", "capacity", "state", "labels", "tls",
        "load",
    }  # fmt: skip
    assert a["capacity"] == 4 and a["state"] == "active" and a["load"]["inflight"] == 3
    assert b["load"] is None and b["labels"] == {"gpu": "l4"} and b["zone"] == "z2"


def test_topology_table(etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema) -> None:
    etcd.put(schema.shard("a"), b'{"address": "h:1", "zone": "eu-1a"}')
    result = run("topology", "--etcd", etcd_endpoint, "--service", "chat")
    assert result.returncode == 0
    assert "eu-1a" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(", 1 shard")  # not "1 shards"


def test_watch_prints_a_line_per_change(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema
) -> None:
    proc = subprocess.Popen(
        [*CLI, "topology", "--etcd", etcd_endpoint, "--service", "chat", "--json", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["shards"] == []
        etcd.put(schema.shard("a"), b'{"address": "h:1"}')
        second = json.loads(proc.stdout.readline())
        assert [s["id"] for s in second["shards"]] == ["a"]
        etcd.delete(schema.shard("a"))
        third = json.loads(proc.stdout.readline())
        assert third["shards"] == [] and third["revision"] > second["revision"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_unreachable_etcd_is_one_line_and_exit_2() -> None:
    result = run(
        "topology", "--etcd", f"127.0.0.1:{free_port()}", "--service", "chat", "--timeout", "2"
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("shardroute: cannot reach etcd at 127.0.0.1:")
    assert "check that etcd runs there (for development: `shardroute etcd`)" in result.stderr


def test_bad_endpoint_is_a_clear_error() -> None:
    result = run("topology", "--etcd", "nonsense", "--service", "chat")
    assert result.returncode == 2 and "expected host:port" in result.stderr
