"""etcd passwords never on a command line, in a log record or in an error (issue 13):
a real etcd with authentication enabled, the ``shardroute`` command and a shard process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_etcd_auth import etcdctl

from shardroute import cli
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.errors import ConfigError, EtcdUnavailable
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.etcd.credentials import PASSWORD_ENV
from shardroute.testing.etcd import EtcdServer, free_port

SECRET = "Sup3r-s3cret-etcd"


@pytest.fixture
def auth_etcd(etcd_server: EtcdServer) -> EtcdServer:
    etcdctl(etcd_server, "user", "add", f"root:{SECRET}")
    etcdctl(etcd_server, "auth", "enable")
    etcd = EtcdClient(EtcdOptions((etcd_server.endpoint,), user="root", password=SECRET))
    etcd.put(KeySchema("chat").shard("s1"), b'{"address": "127.0.0.1:7001"}')
    etcd.close()
    return etcd_server


def test_cli_reads_the_password_from_a_file_or_the_environment(
    auth_etcd: EtcdServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["topology", "--etcd", auth_etcd.endpoint, "--service", "chat", "--json"]
    password_file = tmp_path / "etcd-password"
    password_file.write_text(SECRET + "\n")
    assert cli.main([*base, "--user", "root", "--etcd-password-file", str(password_file)]) == 0
    assert '"id":"s1"' in capsys.readouterr().out
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    assert cli.main([*base, "--etcd-user", "root"]) == 0
    out, err = capsys.readouterr()
    assert '"id":"s1"' in out and SECRET not in out + err
    monkeypatch.delenv(PASSWORD_ENV)
    assert cli.main([*base, "--user", "root", "--password", SECRET]) == 0  # deprecated
    assert "--password is deprecated" in capsys.readouterr().err
    assert cli.main([*base, "--user", "root"]) == 2  # a user and no password: said so
    err = capsys.readouterr().err
    assert "needs a password" in err and SECRET not in err


def test_a_shard_process_takes_the_password_from_the_environment(
    auth_etcd: EtcdServer,
) -> None:
    command = [
        sys.executable, "-m", "shardroute.server.run",
        "--class", "shardroute.examples.chat:ChatShard",
        "--etcd", auth_etcd.endpoint, "--etcd-user", "root",
        "--service", "chat", "--shard-id", "authed", "--port", str(free_port()),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, PASSWORD_ENV: SECRET},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY ")
        with open(f"/proc/{proc.pid}/cmdline", "rb") as handle:
            assert SECRET.encode() not in handle.read()  # nothing on the command line
        options = EtcdOptions((auth_etcd.endpoint,), user="root", password=SECRET)
        with EtcdTopologySource(options, "chat") as source:
            source.wait_for(lambda t: "authed" in t.shards, 10)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert SECRET not in err  # nor in its logs


def test_no_password_in_log_records_or_errors(
    auth_etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-pa55word-value"
    errors: list[BaseException] = []
    with pytest.raises(ConfigError) as refused:
        EtcdTopologySource(auth_etcd.endpoint, "chat", user="root", password=wrong).start()
    errors.append(refused.value)
    gone = f"127.0.0.1:{free_port()}"
    with pytest.raises(EtcdUnavailable) as unreachable:
        EtcdTopologySource(gone, "chat", timeout=1, user="root", password=SECRET).start()
    errors.append(unreachable.value)
    source = EtcdTopologySource(auth_etcd.endpoint, "chat", user="root", password=SECRET)
    with source:
        source.wait_for(lambda t: "s1" in t.shards, 10)
        auth_etcd.kill()  # the watch breaks: warnings are logged
        source.wait_for(lambda t: source.staleness() > 0, 10)
    texts = [str(e) + repr(e) + str(e.__cause__) for e in errors]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records and all(SECRET not in t and wrong not in t for t in texts)
