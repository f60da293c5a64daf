"""Session keys with '/', spaces, non-ASCII characters and '%' end to end (issue 13): real
chat shards in subprocesses and a real etcd. Before, ``user/42`` made the shard raise an
uncaught error (the caller saw UNKNOWN) and a non-ASCII key could not be sent at all."""

from __future__ import annotations

import grpc
import pytest
from chat_calls import history, turn

from shardroute import metadata
from shardroute.client import ShardClient
from shardroute.discovery.keys import KeySchema
from shardroute.errors import InvalidSessionKey, OutcomeUnknown
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.cluster import ShardCluster

KEYS = ["user/42", "two words", " edges ", "çava/ünï 🎉", "100%", "a%2Fb"]


@pytest.fixture
def shard_count() -> int:
    return 3


def test_keys_route_migrate_and_survive_a_shard_kill(
    shard_client: ShardClient, shard_cluster: ShardCluster, etcd: EtcdClient
) -> None:
    client = shard_client
    for n, key in enumerate(KEYS):
        assert turn(client, key, f"{n}-a").turns_held == 1
        assert turn(client, key, f"{n}-b").turns_held == 2
    for n, key in enumerate(KEYS):
        assert history(client, key) == [f"{n}-a", f"{n}-b"]  # no key collided with another
    # Migrate each session to a shard other than its owner: the state goes along.
    for n, key in enumerate(KEYS):
        owner = turn(client, key, f"{n}-c").shard_id
        target = next(s for s in client.source.current().shards if s != owner)
        result = client.migrate(key, target=target)
        assert (result.session_key, result.target) == (key, target)
        assert turn(client, key, f"{n}-d").shard_id == target
    schema = KeySchema("chat")
    assert etcd.get(schema.session("user/42")) is not None  # the override, at its wire form
    assert etcd.get(schema.prefix + "sessions/user") is None
    # Kill the shard holding "user/42": its sessions are taken over from the store.
    victim = turn(client, "user/42", "0-e").shard_id
    shard_cluster.kill(victim)
    for n, key in enumerate(KEYS):
        try:
            last = turn(client, key, f"{n}-f")
        except OutcomeUnknown:  # a stream broken on the dead shard's connection: retry
            last = turn(client, key, f"{n}-f")
        assert last.shard_id != victim
        expected = [f"{n}-{s}" for s in "abcd"] + (["0-e"] if key == "user/42" else [])
        assert history(client, key) == [*expected, f"{n}-f"]


def test_invalid_keys_are_refused_by_the_client_and_the_shard(
    shard_client: ShardClient, shard_cluster: ShardCluster
) -> None:
    chat = shard_client.stub(chat_pb2_grpc.ChatStub)
    for key in ("", "k" * 513):
        with pytest.raises(InvalidSessionKey):
            chat.History(chat_pb2.HistoryRequest(), session_key=key)
    # A caller that is not a shardroute client: a malformed header, a key too long in
    # the request, a raw '/' (taken as it is). INVALID_ARGUMENT, never UNKNOWN.
    address = next(iter(shard_cluster.addresses.values()))
    with grpc.insecure_channel(address) as channel:
        raw = chat_pb2_grpc.ChatStub(channel)
        for md, request in [
            ([(metadata.SESSION_KEY, "%ZZ")], chat_pb2.HistoryRequest()),
            ([], chat_pb2.HistoryRequest(session_key="k" * 600)),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                raw.History(request, metadata=md, timeout=10)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value
    turn(shard_client, "raw/key", "hello")
    owner = shard_client.route("raw/key").shard.id
    with grpc.insecure_channel(shard_cluster.addresses[owner]) as channel:
        reply = chat_pb2_grpc.ChatStub(channel).History(
            chat_pb2.HistoryRequest(), metadata=[(metadata.SESSION_KEY, "raw/key")], timeout=10
        )
    assert [t.prompt for t in reply.turns] == ["hello"]
