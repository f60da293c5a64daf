"""The control service is an admin surface (docs/security.md): the attacks of issue 13,
each refused with nothing changed; authorised movers, drains and EndSession still work.

Real etcd, two real chat shards in this process (both shells), a real client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from chat_calls import history, turn
from shells import KINDS, Shell

from shardroute import ShardClient
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import MigrationFailed
from shardroute.security import ControlAuth, ControlToken
from shardroute.server import ServerState
from shardroute.sessions.chunks import split_chunks
from shardroute.testing.waiting import wait_until

TOKEN = ControlToken("s3cret-control-token-0123456789")
WRONG = ControlToken("not-the-token-but-long-enough-000")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def guarded(etcd_endpoint: str, kind: str) -> Iterator[dict[str, Any]]:
    """Two chat shards whose control services ask for ``TOKEN``."""
    auth = ControlAuth(token=TOKEN)
    common = {"service": "chat", "etcd": etcd_endpoint, "token_delay_s": 0, "control_auth": auth}
    shells = {shard_id: Shell(kind, shard_id=shard_id, **common) for shard_id in ("a", "b")}
    try:
        for shell in shells.values():
            shell.do("start")
        for shell in shells.values():
            wait_until(lambda s=shell: {"a", "b"} <= set(s.server.topology.shards))
        yield shells
    finally:
        for shell in shells.values():
            shell.close()


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[ShardClient]:
    source = EtcdTopologySource(etcd_endpoint, "chat")
    source.start()
    wait_until(lambda: {"a", "b"} <= set(source.current().shards))
    with ShardClient(source, control_token=TOKEN) as made:
        yield made
    source.close()


def _attacks(stub: Any, key: str) -> dict[str, Callable[[tuple[tuple[str, str], ...]], Any]]:
    huge = 2**64 - 1
    return {
        "GetStatus": lambda md: stub.GetStatus(shard_pb2.GetStatusRequest(), metadata=md),
        "ListSessions": lambda md: stub.ListSessions(shard_pb2.ListSessionsRequest(), metadata=md),
        "ExportSession": lambda md: list(
            stub.ExportSession(
                shard_pb2.ExportSessionRequest(session_key=key, epoch=huge), metadata=md
            )
        ),
        "ImportSession": lambda md: stub.ImportSession(
            split_chunks(key, huge, b'[["evil","data"]]', 1024, 0), metadata=md
        ),
        "WarmSession": lambda md: stub.WarmSession(
            shard_pb2.WarmSessionRequest(session_key=key, epoch=huge), metadata=md
        ),
        "ReleaseSession": lambda md: stub.ReleaseSession(
            shard_pb2.ReleaseSessionRequest(session_key=key, epoch=huge, new_owner="evil"),
            metadata=md,
        ),
        "Drain": lambda md: stub.Drain(shard_pb2.DrainRequest(), metadata=md),
    }


def test_control_calls_without_the_token_are_refused_and_change_nothing(
    guarded: dict[str, Shell], client: ShardClient
) -> None:
    key = "conv-attacked"
    turn(client, key, "hello")
    owner_id = client.route(key).shard.id
    owner = guarded[owner_id]
    before = history(client, key)
    with grpc.insecure_channel(owner.server.address) as channel:
        stub = shard_pb2_grpc.ShardControlStub(channel)
        for credentials, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (WRONG.metadata(), grpc.StatusCode.PERMISSION_DENIED),
        ):
            for name, attack in _attacks(stub, key).items():
                with pytest.raises(grpc.RpcError) as caught:
                    attack(credentials)
                assert caught.value.code() is code, (name, caught.value)
    assert owner.server.state is ServerState.SERVING
    assert owner.server._control_guard.refused_total == 14
    # Not frozen, not released, not replaced: the conversation goes on where it was.
    turn(client, key, "still there?")
    assert history(client, key) == [*before, "still there?"]
    assert client.route(key).shard.id == owner_id
    assert client.stats.snapshot().get("redirects", 0) == 0


def test_the_token_admits_movers_and_end_session_needs_none(
    guarded: dict[str, Shell], client: ShardClient, etcd_endpoint: str
) -> None:
    key = "conv-moved"
    turn(client, key, "one")
    source = client.route(key).shard.id
    target = "b" if source == "a" else "a"
    result = client.migrate(key, target)
    assert (result.source, result.target) == (source, target)
    turn(client, key, "two")
    assert history(client, key) == ["one", "two"]
    with grpc.insecure_channel(guarded[target].server.address) as channel:
        stub = shard_pb2_grpc.ShardControlStub(channel)
        listed = stub.ListSessions(shard_pb2.ListSessionsRequest(), metadata=TOKEN.metadata())
        assert key in [s.session_key for s in listed.sessions]
    # EndSession is the application's: a client with no control token ends its session.
    plain_source = EtcdTopologySource(etcd_endpoint, "chat")
    plain_source.start()
    try:
        with ShardClient(plain_source) as plain:
            assert plain.end_session(key) is True
    finally:
        plain_source.close()


def test_a_mover_without_the_token_is_refused_and_rolls_back(
    guarded: dict[str, Shell], etcd_endpoint: str
) -> None:
    source_topology = EtcdTopologySource(etcd_endpoint, "chat")
    source_topology.start()
    try:
        wait_until(lambda: {"a", "b"} <= set(source_topology.current().shards))
        with ShardClient(source_topology) as untrusted:
            key = "conv-kept"
            turn(untrusted, key, "mine")
            home = untrusted.route(key).shard.id
            with pytest.raises(MigrationFailed):
                untrusted.migrate(key, "b" if home == "a" else "a")
            turn(untrusted, key, "still mine")
            assert history(untrusted, key) == ["mine", "still mine"]
            assert untrusted.route(key).shard.id == home
    finally:
        source_topology.close()


def test_a_drain_moves_sessions_with_the_shards_own_token(
    guarded: dict[str, Shell], client: ShardClient
) -> None:
    keys = [f"conv-drain-{i}" for i in range(6)]
    for key in keys:
        turn(client, key, "before")
    drained = guarded["a"]
    held = [k for k in keys if client.route(k).shard.id == "a"]
    assert held, "some session must live on the drained shard"
    drained.do("drain", 5.0)
    assert drained.server.last_drain is not None
    assert drained.server.last_drain.moved == len(held)
    assert drained.server.last_drain.failed == 0
    for key in keys:
        turn(client, key, "after")
        assert history(client, key) == ["before", "after"]
