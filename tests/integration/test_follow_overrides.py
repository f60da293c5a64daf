"""Clients that follow session overrides send moved sessions straight to their owner
(real etcd, real shards): no redirect, and every such client agrees."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from chat_calls import history, turn

from shardroute import metadata
from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import Topology
from shardroute.routing import Reason
from shardroute.testing.etcd import EtcdServer


def owner_of(topology: Topology, session: str) -> str | None:
    found = topology.overrides.get(session)
    return None if found is None else found.owner


@pytest.fixture
def shard_count() -> int:
    return 3


def test_a_moved_session_goes_to_its_owner_without_a_redirect(
    shard_client: ShardClient, etcd_server: EtcdServer
) -> None:
    session = "conv-followed"
    turn(shard_client, session, "one")
    endpoint = etcd_server.endpoint
    with (
        ShardClient.connect(endpoint, "chat", timeout=10, follow_overrides=True) as follower,
        ShardClient.connect(endpoint, "chat", timeout=10) as plain,
    ):
        follower.source.wait_for(lambda t: len(t) == 3, 10)
        plain.source.wait_for(lambda t: len(t) == 3, 10)
        home = follower.route(session).shard.id
        target = next(s for s in shard_client.source.current().shards if s != home)
        shard_client.migrate(session, target=target)  # another client moves it

        # the follower sees the committed override by the watch (the move's fence, owner
        # still the source, may come first) and routes to the owner
        follower.source.wait_for(lambda t: owner_of(t, session) == target, 10)
        decision = follower.route(session)
        assert (decision.shard.id, decision.reason) == (target, Reason.OVERRIDE)
        reply = turn(follower, session, "two")
        assert reply.shard_id == target and reply.turns_held == 2
        assert "redirects" not in follower.stats.snapshot()
        assert follower.router.pinned(session) is None  # placed by the override alone

        # a client that does not follow them goes home and is redirected once
        assert plain.source.current().overrides == {}
        assert plain.route(session).reason is Reason.AFFINITY
        assert turn(plain, session, "three").shard_id == target
        assert plain.stats.snapshot().get("redirects") == 1


def test_the_async_client_follows_them_too(
    shard_client: ShardClient, etcd_server: EtcdServer
) -> None:
    session = "conv-followed-async"
    turn(shard_client, session, "one")
    home = shard_client.route(session).shard.id
    target = next(s for s in shard_client.source.current().shards if s != home)
    shard_client.migrate(session, target=target)

    async def route() -> tuple[str, Reason]:
        client = await AsyncShardClient.connect(
            etcd_server.endpoint, "chat", timeout=10, follow_overrides=True
        )
        try:
            await asyncio.to_thread(
                client.source.wait_for, lambda t: owner_of(t, session) == target
            )
            decision = client.route(session)
            return decision.shard.id, decision.reason
        finally:
            await client.close()

    assert asyncio.run(route()) == (target, Reason.OVERRIDE)


def test_a_new_session_spilled_off_its_home_is_followed_there(
    shard_client: ShardClient, etcd_server: EtcdServer
) -> None:
    """A client spilled a new session (its home was full): the shard that took it wrote an
    override at its first save, so a following client routes there and a plain client's
    call at the home is redirected there, not taken back home (a move, before)."""
    session = "conv-spilled-new"
    home = shard_client.route(session).shard.id
    shards = shard_client.source.current().shards
    target = next(s for s in sorted(shards) if s != home)
    with grpc.insecure_channel(shards[target].address) as channel:  # the spilled first call
        request = chat_pb2.GenerateRequest(session_key=session, prompt="one", max_tokens=3)
        spill = ((metadata.REASON, "spill"), (metadata.SHARD_ID, target))
        tokens = list(chat_pb2_grpc.ChatStub(channel).Generate(request, metadata=spill))
    assert tokens[-1].shard_id == target
    with ShardClient.connect(
        etcd_server.endpoint, "chat", timeout=10, follow_overrides=True
    ) as follower:
        follower.source.wait_for(lambda t: owner_of(t, session) == target, 10)
        decision = follower.route(session)
        assert (decision.shard.id, decision.reason) == (target, Reason.OVERRIDE)
        assert turn(follower, session, "two").shard_id == target
    assert shard_client.route(session).reason is Reason.AFFINITY  # home has room now
    assert turn(shard_client, session, "three").shard_id == target
    assert shard_client.stats.snapshot().get("redirects") == 1
    assert history(shard_client, session) == ["one", "two", "three"]
