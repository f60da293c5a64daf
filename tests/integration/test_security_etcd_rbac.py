"""Least privilege in etcd (docs/security.md, "etcd RBAC"): the roles the docs give, created
with the same etcdctl commands, are enough for shards to register, serve and move
sessions, for clients to route and for a mover to move; a client's read-only role cannot
write, and a shard cannot write another shard's record. Real etcd with auth enabled."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from chat_calls import history, turn

from shardroute import ShardClient
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import ChatShard
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.waiting import wait_until

P = "/shardroute/chat/"

# The commands of docs/security.md ("etcd RBAC with least privilege"), for service "chat".
ROLES = [
    ["role", "add", "chat-client"],
    ["role", "grant-permission", "chat-client", "read", P, "--prefix=true"],
    ["role", "add", "chat-mover"],
    ["role", "grant-permission", "chat-mover", "read", P, "--prefix=true"],
    ["role", "grant-permission", "chat-mover", "readwrite", P + "sessions/", "--prefix=true"],
    *(
        command
        for shard in ("a", "b")
        for command in (
            ["role", "add", f"chat-shard-{shard}"],
            ["role", "grant-permission", f"chat-shard-{shard}", "read", P, "--prefix=true"],
            ["role", "grant-permission", f"chat-shard-{shard}", "readwrite", P + f"shards/{shard}"],
            ["role", "grant-permission", f"chat-shard-{shard}", "readwrite", P + f"load/{shard}"],
            [
                "role", "grant-permission", f"chat-shard-{shard}", "readwrite",
                P + "sessions/", "--prefix=true",
            ],
            [
                "role", "grant-permission", f"chat-shard-{shard}", "readwrite",
                P + "state/", "--prefix=true",
            ],
        )
    ),
]  # fmt: skip
USERS = {
    "chat-client": "client-pw",
    "chat-mover": "mover-pw",
    "chat-shard-a": "shard-a-pw",
    "chat-shard-b": "shard-b-pw",
}


def _etcdctl(server: EtcdServer, *args: str, user: str | None = None) -> None:
    binary = os.path.join(os.path.dirname(server.binary), "etcdctl")
    auth = [f"--user={user}"] if user else []
    subprocess.run(
        [binary, f"--endpoints={server.endpoint}", *auth, *args],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def rbac(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    _etcdctl(etcd_server, "user", "add", "root:root-pw")
    _etcdctl(etcd_server, "role", "add", "root")
    _etcdctl(etcd_server, "user", "grant-role", "root", "root")
    for command in ROLES:
        _etcdctl(etcd_server, *command)
    for user, password in USERS.items():
        _etcdctl(etcd_server, "user", "add", f"{user}:{password}")
        _etcdctl(etcd_server, "user", "grant-role", user, user)
    _etcdctl(etcd_server, "auth", "enable")
    yield etcd_server
    _etcdctl(etcd_server, "auth", "disable", user="root:root-pw")


def _options(server: EtcdServer, user: str) -> EtcdOptions:
    return EtcdOptions((server.endpoint,), user=user, password=USERS[user])


def test_least_privilege_roles_suffice_and_bound_each_component(rbac: EtcdServer) -> None:
    shards = [
        ChatShard(
            shard_id=shard_id,
            service="chat",
            etcd=_options(rbac, f"chat-shard-{shard_id}"),
            token_delay_s=0,
        )
        for shard_id in ("a", "b")
    ]
    source = EtcdTopologySource(_options(rbac, "chat-client"), "chat")
    try:
        for shard in shards:
            shard.start()
        source.start()
        wait_until(lambda: {"a", "b"} <= set(source.current().shards))
        with ShardClient(source) as client:
            keys = [f"rbac-{i}" for i in range(4)]
            for key in keys:
                turn(client, key, "one")  # shards write state/ and their load
            # A mover with its own role moves a session (fence, export, import, commit).
            mover_source = EtcdTopologySource(_options(rbac, "chat-mover"), "chat")
            mover_source.start()
            try:
                from shardroute.sessions.migrator import Migrator

                with Migrator(
                    EtcdClient(_options(rbac, "chat-mover")), "chat", mover_source, close_etcd=True
                ) as mover:
                    home = client.route(keys[0]).shard.id
                    mover.migrate(keys[0], target="b" if home == "a" else "a")
            finally:
                mover_source.close()
            turn(client, keys[0], "two")
            assert history(client, keys[0]) == ["one", "two"]
        # A client's role reads and cannot write; a shard cannot write another's record.
        for user, key in (
            ("chat-client", P + "shards/evil"),
            ("chat-client", P + "sessions/rbac-1"),
            ("chat-shard-a", P + "shards/b"),
            ("chat-mover", P + "state/rbac-1"),
        ):
            writer = EtcdClient(_options(rbac, user))
            try:
                with pytest.raises(ConfigError, match="permission denied"):
                    writer.put(key, b'{"address": "evil:1"}')
            finally:
                writer.close()
        assert set(source.current().shards) == {"a", "b"}
    finally:
        source.close()
        for shard in shards:
            shard.stop()


def test_shard_processes_log_in_without_a_password_on_their_command_line(
    rbac: EtcdServer,
) -> None:
    # ShardCluster passes etcd credentials through the environment: the command line of
    # a process is readable by every user of the machine (/proc/<pid>/cmdline, ps).
    # The default lease (10 s, so etcd calls may take 5 s): etcd checks a password with
    # bcrypt, slow on a busy machine, and ShardCluster's 2 s lease allows 1 s.
    with ShardCluster(
        rbac.endpoint,
        zones=("zone-a",),
        lease_ttl_s=10,
        etcd_user="chat-client",
        etcd_password=USERS["chat-client"],
        shard_kwargs={"token_delay_s": 0},
    ) as cluster:
        for shard_id in ("a", "b"):
            user = f"chat-shard-{shard_id}"
            cluster.add(shard_id, etcd_user=user, etcd_password=USERS[user])
        assert set(cluster.source.current().shards) == {"a", "b"}
        for shard_id in ("a", "b"):
            pid = cluster[shard_id].process.pid
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            assert f"chat-shard-{shard_id}".encode() in argv
            assert not any(pw.encode() in arg for arg in argv for pw in USERS.values())
        with ShardClient(cluster.source) as client:
            turn(client, "rbac-process", "one")  # the shard wrote state/ with its role
            assert history(client, "rbac-process") == ["one"]


def test_a_cluster_needs_both_user_and_password(etcd_server: EtcdServer) -> None:
    with pytest.raises(ConfigError, match="go together"):
        ShardCluster(etcd_server.endpoint, etcd_user="chat-client")
    with (
        ShardCluster(etcd_server.endpoint) as cluster,
        pytest.raises(ConfigError, match="go together"),
    ):
        cluster.add("a", etcd_user="chat-shard-a")
