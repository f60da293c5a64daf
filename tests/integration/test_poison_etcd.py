"""Poison records in a real etcd (issue 13): each is skipped, logged once and counted;
``connect()``, the CLI and ``ShardServer.start()`` go on, and so does the watch (a later
shard removal or lease expiry is still seen)."""

from __future__ import annotations

import json
import logging

import pytest

from shardroute import cli
from shardroute.client import ShardClient
from shardroute.discovery.keys import KeySchema, decode_key, key_text
from shardroute.discovery.records import MAX_RECORD_BYTES
from shardroute.etcd import EtcdClient
from shardroute.server import ShardServer
from shardroute.testing.etcd import EtcdServer

PREFIX = "/shardroute/chat/"
GOOD = b'{"address": "127.0.0.1:1"}'


def deep(depth: int = 5000) -> bytes:
    return b'{"address": "127.0.0.1:2", "labels": ' + b"[" * depth + b"]" * depth + b"}"


# name -> (key under shards/ as bytes, value)
POISONS: dict[str, tuple[bytes, bytes]] = {
    "deep JSON": (b"deep", deep()),
    "value not UTF-8": (b"latin", b'{"address": "127.0.0.1:2", "zone": "z\xe9"}'),
    "key not UTF-8": (b"bad\xff\xfe", GOOD),
    "weight 1e9": (b"heavy", b'{"address": "127.0.0.1:2", "weight": 1e9}'),
    "absurd capacity": (b"huge", b'{"address": "127.0.0.1:2", "capacity": 1e18}'),
    "oversized value": (
        b"big",
        json.dumps({"address": "127.0.0.1:2", "zone": "z" * MAX_RECORD_BYTES}).encode(),
    ),
}


def put_raw(etcd: EtcdClient, key: bytes, value: bytes, lease: int | None = None) -> None:
    etcd._etcd.put(key, value, lease=lease)  # bytes keys, as any etcd client can write


def shown(key: bytes) -> str:
    """How a key appears in ``Topology.malformed`` and in logs."""
    return key_text(decode_key(key))


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_poison_is_skipped_counted_logged_once_and_the_watch_goes_on(
    poison: str, etcd: EtcdClient, schema: KeySchema, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "shardroute.discovery")
    name, value = POISONS[poison]
    before, during = PREFIX.encode() + b"shards/" + name, PREFIX.encode() + b"shards/x" + name
    lease = etcd.grant_lease(30)
    etcd.put(schema.shard("leased"), GOOD, lease=lease)
    etcd.put(schema.shard("plain"), GOOD)
    put_raw(etcd, before, value)
    # Before: connect() raised (RecursionError, "etcd is unreachable" for a key that is
    # not UTF-8), or took the value in (weight 1e9: 1.6e11 ring points to build).
    with ShardClient.connect(etcd.options.endpoints, "chat", timeout=5) as client:
        topology = client.source.current()
        assert set(topology.shards) == {"leased", "plain"}
        assert topology.malformed == {shown(before)}
        for _ in range(3):  # rewritten on the watch: skipped each time, logged once
            put_raw(etcd, during, value)
        client.source.wait_for(lambda t: shown(during) in t.malformed, 10)
        # The watch goes on: a shard whose lease ends still leaves every client's view.
        etcd.revoke_lease(lease)
        topology = client.source.wait_for(lambda t: "leased" not in t.shards, 10)
        assert set(topology.shards) == {"plain"}
        assert client.route("conv-1").shard.id == "plain"
        assert client.source.malformed_total == 4  # type: ignore[attr-defined]
    logged = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(logged) == 2, logged
    assert all(len(line) < 500 for line in logged)  # the reason, never the whole value


def test_cli_and_shard_server_start_with_every_poison_in_etcd(
    etcd_server: EtcdServer,
    etcd: EtcdClient,
    schema: KeySchema,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in POISONS.values():
        put_raw(etcd, PREFIX.encode() + b"shards/" + name, value)
    # Shard servers also follow session overrides: poison those too.
    put_raw(etcd, PREFIX.encode() + b"sessions/deep", deep())
    put_raw(etcd, PREFIX.encode() + b"sessions/\xff", b'{"owner": "a", "epoch": 1}')
    put_raw(etcd, PREFIX.encode() + b"config", b'{"routing": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    # ShardServer.start() reads the topology (with overrides) and goes on.
    server = ShardServer(shard_id="s1", service="chat", etcd=etcd_server.endpoint, lease_ttl_s=2)
    server.start()
    try:
        assert cli.main(["topology", "--etcd", etcd_server.endpoint, "--service", "chat"]) == 0
        out = capsys.readouterr().out
        assert "s1" in out and "skipped malformed:" in out and "\\xff" in out
        assert (
            cli.main(["topology", "--etcd", etcd_server.endpoint, "--service", "chat", "--json"])
            == 0
        )
        assert [s["id"] for s in json.loads(capsys.readouterr().out)["shards"]] == ["s1"]
        with ShardClient.connect(etcd_server.endpoint, "chat", timeout=5) as client:
            assert set(client.source.current().shards) == {"s1"}
            etcd.put(schema.shard("brief"), GOOD, lease=etcd.grant_lease(2))
            client.source.wait_for(lambda t: "brief" in t.shards, 10)
            # Its lease expires (nobody keeps it alive): every client still sees it go.
            client.source.wait_for(lambda t: "brief" not in t.shards, 15)
            topology = server.topology
            assert topology is not None and "s1" in topology.shards
            assert {shown(PREFIX.encode() + b"sessions/deep"), schema.config} <= topology.malformed
    finally:
        server.stop(0)
