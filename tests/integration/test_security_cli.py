"""The command line over TLS with a control token (docs/security.md): a shard process
started with ``--tls-*`` and ``--control-token-file``, then ``shardroute migrate`` and
``shardroute drain`` with the same options; without the token they are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from chat_calls import history, turn

from shardroute import ShardClient
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.security import TLSConfig
from shardroute.testing.certs import issue_tls
from shardroute.testing.waiting import wait_until

CLI = [sys.executable, "-m", "shardroute.cli"]
TOKEN = "cli-control-token-0123456789abcdef"


def _tls_args(config: TLSConfig) -> list[str]:
    assert config.ca and config.cert and config.key
    return ["--tls-ca", config.ca, "--tls-cert", config.cert, "--tls-key", config.key]


@pytest.fixture
def tls_shards(tmp_path: Path, etcd_endpoint: str) -> Iterator[tuple[trustme.CA, Path]]:
    """Two chat shard processes serving mTLS, their control service behind TOKEN."""
    ca = trustme.CA()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    procs = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDROUTE_CONTROL")}
    try:
        for shard_id in ("a", "b"):
            pems = issue_tls(ca, tmp_path, shard_id, "127.0.0.1")
            command = [
                sys.executable, "-m", "shardroute.server.run",
                "--class", "shardroute.examples.chat:ChatShard",
                "--etcd", etcd_endpoint, "--service", "chat", "--shard-id", shard_id,
                "--kwargs", '{"token_delay_s": 0}',
                *_tls_args(pems), "--control-token-file", str(token_file),
            ]  # fmt: skip
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("READY ")
        yield ca, token_file
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def test_migrate_and_drain_over_mtls_with_the_token(
    tls_shards: tuple[trustme.CA, Path], tmp_path: Path, etcd_endpoint: str
) -> None:
    ca, token_file = tls_shards
    operator = issue_tls(ca, tmp_path, "operator", "operator.example")
    source = EtcdTopologySource(etcd_endpoint, "chat")
    source.start()
    try:
        wait_until(lambda: {"a", "b"} <= set(source.current().shards), 20.0)
        assert all(s.tls for s in source.current().shards.values())
        with ShardClient(source, tls=operator) as client:
            turn(client, "cli-tls", "one")
            owner = client.route("cli-tls").shard.id
            target = "b" if owner == "a" else "a"
            base = [*CLI, "migrate", "--etcd", etcd_endpoint, "--service", "chat"]
            move = [*base, "--session", "cli-tls", "--to", target, *_tls_args(operator)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDROUTE_CONTROL")}
            refused = subprocess.run(move, capture_output=True, text=True, timeout=60, env=env)
            assert refused.returncode != 0
            assert "UNAUTHENTICATED" in refused.stderr or "control" in refused.stderr
            moved = subprocess.run(
                [*move, "--control-token-file", str(token_file)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert moved.returncode == 0, moved.stderr
            assert json.loads(moved.stdout)["to"] == target
            turn(client, "cli-tls", "two")
            assert history(client, "cli-tls") == ["one", "two"]
            drain = [
                *CLI, "drain", "--etcd", etcd_endpoint, "--service", "chat",
                "--shard", target, "--wait", *_tls_args(operator),
            ]  # fmt: skip
            with_token = {**env, "SHARDROUTE_CONTROL_TOKEN_FILE": str(token_file)}
            drained = subprocess.run(
                drain, capture_output=True, text=True, timeout=90, env=with_token
            )
            assert drained.returncode == 0, drained.stderr
            wait_until(lambda: target not in source.current().shards, 20.0)
            turn(client, "cli-tls", "three")
            assert history(client, "cli-tls") == ["one", "two", "three"]
    finally:
        source.close()
