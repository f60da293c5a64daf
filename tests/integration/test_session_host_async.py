"""The asyncio server follows the same session rules (shared SessionHost, thin shell)."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from shardroute import metadata
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.examples.chat import AsyncChatShard, chat_pb2, chat_pb2_grpc
from shardroute.sessions import InMemorySessionStore


async def _turn(address: str, key: str, **md: str) -> list[chat_pb2.Token]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        request = chat_pb2.GenerateRequest(session_key=key, prompt="hello there", max_tokens=6)
        return [t async for t in stub.Generate(request, metadata=tuple(md.items()))]


def test_async_shards_share_history_through_the_store_and_migrate() -> None:
    async def main() -> None:
        store = InMemorySessionStore()
        a = AsyncChatShard(shard_id="a", service="chat", etcd=None, session_store=store)
        b = AsyncChatShard(shard_id="b", service="chat", etcd=None, session_store=store)
        async with a, b:
            for turn in (1, 2):
                tokens = await _turn(a.address, "k")
                assert (tokens[-1].turns_held, tokens[-1].shard_id) == (turn, "a")
            # b takes the session over from the shared store.
            tokens = await _turn(b.address, "k", **{metadata.REASON: "failover"})
            assert tokens[-1].turns_held == 3
            # a's copy is now stale: its checkpoint loses the CAS, ABORTED, copy dropped.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _turn(a.address, "k")
            assert caught.value.code() is grpc.StatusCode.ABORTED and "k" not in a.sessions
            # Export from b (freezes), import into a, release b to a: b redirects to a.
            async with (
                grpc.aio.insecure_channel(b.address) as bc,
                grpc.aio.insecure_channel(a.address) as ac,
            ):
                b_ctl, a_ctl = (
                    shard_pb2_grpc.ShardControlStub(bc),
                    shard_pb2_grpc.ShardControlStub(ac),
                )
                request = shard_pb2.ExportSessionRequest(session_key="k", epoch=1)
                chunks = [c async for c in b_ctl.ExportSession(request)]
                assert b.sessions.is_frozen("k")
                reply = await a_ctl.ImportSession(iter(chunks))
                assert reply.state_bytes == chunks[-1].total_bytes
                await b_ctl.ReleaseSession(
                    shard_pb2.ReleaseSessionRequest(session_key="k", epoch=1, new_owner="a")
                )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _turn(b.address, "k")
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert metadata.get(caught.value.trailing_metadata(), metadata.REDIRECT) == "a"

    asyncio.run(main())
