"""TLS and mutual TLS on every hop (docs/security.md): client → shard (sync and asyncio),
mover → shard, shard → shard (drain); strangers refused; certificates rotated without a
restart. Real etcd, real chat shards, throwaway certificates from trustme."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from chat_calls import history, turn

from shardroute import AsyncShardClient, ShardClient
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import ShardRouteError
from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.security import ControlAuth, TLSConfig
from shardroute.testing.certs import issue_tls
from shardroute.testing.waiting import wait_until


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def shards(tmp_path: Path, ca: trustme.CA, etcd_endpoint: str) -> Iterator[dict[str, ChatShard]]:
    """Two mTLS chat shards: certificates for 127.0.0.1, client certificates required;
    the control service admits the identity ``mover.example`` and the shards' own."""
    made: dict[str, ChatShard] = {}
    auth = ControlAuth(allowed_identities=("mover.example", "shard.example"))
    try:
        for shard_id in ("a", "b"):
            tls = issue_tls(ca, tmp_path, shard_id, "127.0.0.1", "shard.example")
            made[shard_id] = ChatShard(
                shard_id=shard_id,
                service="chat",
                etcd=etcd_endpoint,
                token_delay_s=0,
                tls=tls,
                control_auth=auth,
            ).start()
        for shard in made.values():
            wait_until(lambda s=shard: {"a", "b"} <= set(s.topology.shards))
        yield made
    finally:
        for shard in made.values():
            shard.stop()


@pytest.fixture
def source(shards: dict[str, ChatShard], etcd_endpoint: str) -> Iterator[EtcdTopologySource]:
    topology = EtcdTopologySource(etcd_endpoint, "chat")
    topology.start()
    wait_until(lambda: {"a", "b"} <= set(topology.current().shards))
    yield topology
    topology.close()


def test_mtls_end_to_end_calls_migration_and_drain(
    tmp_path: Path, ca: trustme.CA, shards: dict[str, ChatShard], source: EtcdTopologySource
) -> None:
    assert all(shard.tls for shard in source.current().shards.values())
    mover = issue_tls(ca, tmp_path, "mover", "mover.example")
    with ShardClient(source, tls=mover) as client:
        keys = [f"conv-tls-{i}" for i in range(6)]
        for key in keys:
            turn(client, key, "one")
        moved = keys[0]
        home = client.route(moved).shard.id
        result = client.migrate(moved, "b" if home == "a" else "a")
        assert result.state_bytes > 0
        turn(client, moved, "two")
        assert history(client, moved) == ["one", "two"]
        # A drain: the shard calls its peer over mTLS with its own certificate.
        shards["a"].drain(5.0)
        assert shards["a"].last_drain is not None
        assert shards["a"].last_drain.failed == 0
        for key in keys:
            turn(client, key, "after")
        assert history(client, keys[1])[-1] == "after"


def test_async_client_over_mtls(
    tmp_path: Path, ca: trustme.CA, shards: dict[str, ChatShard], source: EtcdTopologySource
) -> None:
    app = issue_tls(ca, tmp_path, "app", "app.example")

    async def main() -> list[str]:
        async with AsyncShardClient(source, tls=app) as client:
            chat = client.stub(chat_pb2_grpc.ChatStub)
            request = chat_pb2.GenerateRequest(prompt="hi", max_tokens=3)
            tokens = [t async for t in chat.Generate(request, session_key="conv-aio")]
            assert tokens
            reply = await chat.History(
                chat_pb2.HistoryRequest(), session_key="conv-aio", idempotent=True
            )
            return [t.prompt for t in reply.turns]

    assert asyncio.run(main()) == ["hi"]


def test_strangers_are_refused(
    tmp_path: Path, ca: trustme.CA, shards: dict[str, ChatShard]
) -> None:
    address = shards["a"].address
    request = chat_pb2.HistoryRequest()
    md = (("x-shardroute-session", "conv-x"),)
    # Plaintext: no TLS handshake, nothing served.
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as plain:
            chat_pb2_grpc.ChatStub(channel).History(request, metadata=md, timeout=5)
        assert plain.value.code() is grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA: the shard refuses the handshake.
    other = issue_tls(trustme.CA(), tmp_path, "other", "mover.example")
    trusting = TLSConfig(ca=str(tmp_path / "a-ca.pem"), cert=other.cert, key=other.key)
    with grpc.secure_channel(address, trusting.channel_credentials()) as channel:
        with pytest.raises(grpc.RpcError) as foreign:
            chat_pb2_grpc.ChatStub(channel).History(request, metadata=md, timeout=5)
        assert foreign.value.code() is grpc.StatusCode.UNAVAILABLE
    # The right CA but an identity not on the control allow-list: the application's
    # methods answer, the control service does not.
    app = issue_tls(ca, tmp_path, "app", "app.example")
    with grpc.secure_channel(address, app.channel_credentials()) as channel:
        chat_pb2_grpc.ChatStub(channel).History(request, metadata=md, timeout=5)
        control = shard_pb2_grpc.ShardControlStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            control.ListSessions(shard_pb2.ListSessionsRequest(), timeout=5)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    mover = issue_tls(ca, tmp_path, "mover", "mover.example")
    with grpc.secure_channel(address, mover.channel_credentials()) as channel:
        control = shard_pb2_grpc.ShardControlStub(channel)
        assert control.ListSessions(shard_pb2.ListSessionsRequest(), timeout=5) is not None


def test_a_tls_client_does_not_send_plaintext_unless_allowed(
    tmp_path: Path, ca: trustme.CA, etcd_endpoint: str
) -> None:
    with ChatShard(shard_id="p", service="plain", etcd=etcd_endpoint, token_delay_s=0) as shard:
        topology = EtcdTopologySource(etcd_endpoint, "plain")
        topology.start()
        try:
            wait_until(lambda: "p" in topology.current().shards)
            assert topology.current().shards["p"].tls is False
            tls = issue_tls(ca, tmp_path, "client", "app.example")
            with ShardClient(topology, tls=tls) as strict, pytest.raises(ShardRouteError):
                turn(strict, "conv-p", "secret")
            assert shard.sessions.keys() == []  # nothing reached the shard
            allowing = TLSConfig(ca=tls.ca, cert=tls.cert, key=tls.key, allow_plaintext=True)
            with ShardClient(topology, tls=allowing) as lenient:
                turn(lenient, "conv-p", "fine")
                assert history(lenient, "conv-p") == ["fine"]
        finally:
            topology.close()


def test_the_server_certificate_is_reloaded_when_its_files_change(
    tmp_path: Path, etcd_endpoint: str
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    served = issue_tls(old_ca, tmp_path, "served", "127.0.0.1")
    with ChatShard(shard_id="r", service="rotate", etcd=None, token_delay_s=0, tls=served) as shard:
        fresh = issue_tls(new_ca, tmp_path, "fresh", "127.0.0.1")
        trusting_new = TLSConfig(ca=fresh.ca, cert=fresh.cert, key=fresh.key)

        def history_call(config: TLSConfig) -> Any:
            with grpc.secure_channel(shard.address, config.channel_credentials()) as channel:
                stub = chat_pb2_grpc.ChatStub(channel)
                md = (("x-shardroute-session", "conv-r"),)
                return stub.History(chat_pb2.HistoryRequest(), metadata=md, timeout=5)

        with pytest.raises(grpc.RpcError):
            history_call(trusting_new)  # the shard still presents the old CA's certificate
        # Rotate: new certificate, key and CA bundle in place (the CA bundle too, since
        # the shard verifies client certificates with it).
        assert served.cert and served.key and served.ca and fresh.key and fresh.ca
        shutil.copyfile(fresh.key, served.key)
        shutil.copyfile(fresh.cert or "", served.cert)
        shutil.copyfile(fresh.ca, served.ca)
        assert history_call(trusting_new) is not None


def test_a_shard_cluster_over_mtls_survives_a_kill(tmp_path: Path, etcd_endpoint: str) -> None:
    """The testing package's cluster serves mTLS with throwaway certificates (what
    ``shardroute demo --tls`` runs): calls, a SIGKILL and the take-over from the store."""
    from shardroute.testing.certs import throwaway_tls
    from shardroute.testing.cluster import ShardCluster

    shard_tls, client_tls = throwaway_tls(tmp_path / "certs")
    with ShardCluster(etcd_endpoint, service="tlschat", tls=shard_tls) as cluster:
        cluster.start(2)
        source = EtcdTopologySource(etcd_endpoint, "tlschat")
        source.start()
        try:
            wait_until(lambda: len(source.current().shards) == 2)
            assert all(s.tls for s in source.current().shards.values())
            with ShardClient(source, tls=client_tls) as client:
                turn(client, "conv-k", "before")
                victim = client.route("conv-k").shard.id
                cluster.kill(victim)
                # Once its lease expired, the next turn goes to the survivor over mTLS,
                # which takes the session over from the store (a call racing the kill on
                # the dead connection could be OutcomeUnknown: not what this test is about).
                wait_until(lambda: victim not in source.current().shards, 20.0)
                turn(client, "conv-k", "after")
                assert history(client, "conv-k") == ["before", "after"]
        finally:
            source.close()


def test_the_asyncio_shard_serves_mtls_and_reloads_its_certificate(tmp_path: Path) -> None:
    from shells import Shell

    old_ca, new_ca = trustme.CA(), trustme.CA()
    served = issue_tls(old_ca, tmp_path, "served", "127.0.0.1")
    client_old = issue_tls(old_ca, tmp_path, "client-old", "app.example")
    with Shell("asyncio", shard_id="r", service="rotate", etcd=None, tls=served) as shell:
        shell.start()
        address = shell.server.address

        def history_call(config: TLSConfig) -> Any:
            with grpc.secure_channel(address, config.channel_credentials()) as channel:
                stub = chat_pb2_grpc.ChatStub(channel)
                md = (("x-shardroute-session", "conv-r"),)
                return stub.History(chat_pb2.HistoryRequest(), metadata=md, timeout=5)

        assert history_call(client_old) is not None
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
            chat_pb2_grpc.ChatStub(channel).History(
                chat_pb2.HistoryRequest(), metadata=(("x-shardroute-session", "c"),), timeout=5
            )
        fresh = issue_tls(new_ca, tmp_path, "fresh", "127.0.0.1")
        client_new = issue_tls(new_ca, tmp_path, "client-new", "app.example")
        assert served.cert and served.key and served.ca and fresh.cert and fresh.key and fresh.ca
        shutil.copyfile(fresh.key, served.key)
        shutil.copyfile(fresh.cert, served.cert)
        shutil.copyfile(fresh.ca, served.ca)
        assert history_call(client_new) is not None
