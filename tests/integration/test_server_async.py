"""AsyncShardServer: the same basics as the sync server, on grpc.aio."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute import metadata
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.examples.chat import AsyncChatShard, chat_pb2, chat_pb2_grpc
from shardroute.model import ShardState
from shardroute.server import ServerState


def test_async_shard_registers_serves_chat_and_drains(etcd_endpoint: str) -> None:
    source = EtcdTopologySource(etcd_endpoint, "chat")
    source.start()

    async def scenario() -> None:
        server = AsyncChatShard(shard_id="a1", service="chat", etcd=etcd_endpoint, zone="z1")
        await server.start()
        topology = await asyncio.to_thread(source.wait_for, lambda t: "a1" in t.loads)
        assert topology.shard("a1").address == server.address
        assert topology.shard("a1").zone == "z1"
        async with grpc.aio.insecure_channel(server.address) as channel:
            chat = chat_pb2_grpc.ChatStub(channel)
            for turn in (1, 2):
                call = chat.Generate(chat_pb2.GenerateRequest(session_key="k", prompt="hello"))
                tokens = [t async for t in call]
                assert {(t.turn, t.turns_held) for t in tokens} == {(turn, turn)}
                load = metadata.get(await call.trailing_metadata(), metadata.LOAD)
                assert load is not None and metadata.parse_load(load)["capacity"] == 64
            history = await chat.History(chat_pb2.HistoryRequest(session_key="k"))
            assert history.turns_held == 2 and history.shard_id == "a1"
            status = await shard_pb2_grpc.ShardControlStub(channel).GetStatus(
                shard_pb2.GetStatusRequest()
            )
            assert status.state == shard_pb2.SHARD_STATE_ACTIVE and status.load.sessions == 1
            health = health_pb2_grpc.HealthStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING

            drain = asyncio.get_running_loop().create_task(server.drain(5.0))
            await asyncio.to_thread(
                source.wait_for,
                lambda t: "a1" not in t.shards or t.shard("a1").state is ShardState.DRAINING,
            )
            await drain
        assert server.state is ServerState.STOPPED
        assert await server.wait(timeout=0)

    try:
        asyncio.run(scenario())
        source.wait_for(lambda t: "a1" not in t.shards)
    finally:
        source.close()
