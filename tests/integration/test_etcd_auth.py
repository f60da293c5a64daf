"""User/password authentication is passed through to etcd (reads, watches, writes)."""

from __future__ import annotations

import os
import subprocess

import pytest

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.testing.etcd import EtcdServer


def etcdctl(server: EtcdServer, *args: str) -> None:
    binary = os.path.join(os.path.dirname(server.binary), "etcdctl")
    subprocess.run(
        [binary, f"--endpoints={server.endpoint}", *args],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_user_and_password_reach_etcd(etcd_server: EtcdServer) -> None:
    etcdctl(etcd_server, "user", "add", "root:s3cret")
    etcdctl(etcd_server, "auth", "enable")
    options = EtcdOptions((etcd_server.endpoint,), user="root", password="s3cret")
    writer = EtcdClient(options)
    source = EtcdTopologySource(etcd_server.endpoint, "chat", user="root", password="s3cret")
    try:
        writer.put("/shardroute/chat/shards/a", b'{"address": "h:1"}')
        source.start()
        assert list(source.current().shards) == ["a"]
        writer.put("/shardroute/chat/shards/b", b'{"address": "h:2"}')  # through the watch
        source.wait_for(lambda t: "b" in t.shards, 10)
    finally:
        source.close()
        writer.close()
    with pytest.raises(ConfigError, match="refused the user name or password"):
        EtcdTopologySource(etcd_server.endpoint, "chat", user="root", password="nope").start()
    with pytest.raises(ConfigError, match="pass a user and password"):
        EtcdTopologySource(etcd_server.endpoint, "chat", timeout=2).start()
