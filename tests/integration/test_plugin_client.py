"""The shard_client fixture, as a user's test suite would use it."""

from __future__ import annotations

from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.cluster import ShardCluster


def test_shard_client_reaches_the_cluster(
    shard_client: ShardClient, shard_cluster: ShardCluster
) -> None:
    assert set(shard_client.source.current().shards) == set(shard_cluster.shard_ids)
    chat = shard_client.stub(chat_pb2_grpc.ChatStub)
    request = chat_pb2.GenerateRequest(prompt="hi", max_tokens=2)
    tokens = list(chat.Generate(request, session_key="user-test"))
    assert tokens[-1].shard_id == shard_client.route("user-test").shard.id
