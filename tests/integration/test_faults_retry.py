"""A turn a shard refused before running it (``x-shardroute-not-executed``) is sent again
by the client within its deadline: a busy session or an etcd outage is latency, not an
error (issue 14). Real etcd (stopped and started again), real chat shards, real client."""

from __future__ import annotations

from concurrent import futures

from shardroute.client import ShardClient
from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.testing import EtcdServer
from shardroute.testing.waiting import wait_until


def _turn(client: ShardClient, key: str, prompt: str, tokens: int = 3) -> chat_pb2.Token:
    chat = client.stub(chat_pb2_grpc.ChatStub)
    request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=tokens)
    return list(chat.Generate(request, session_key=key, timeout=30))[-1]


def test_a_turn_refused_because_its_session_is_busy_is_retried(etcd_endpoint: str) -> None:
    shard = ChatShard(
        shard_id="a", service="chat", etcd=etcd_endpoint, token_delay_s=0.05, hold_timeout_s=0.2
    ).start()
    client = ShardClient.connect(etcd_endpoint, "chat")
    try:
        client.source.wait_for(lambda t: "a" in t.shards)
        with futures.ThreadPoolExecutor(2) as pool:
            long = pool.submit(_turn, client, "conv", "first", 20)  # 1 s of tokens
            wait_until(lambda: "conv" in shard.sessions, 15)
            second = _turn(client, "conv", "second")  # busy for 0.2 s, then refused
            first = long.result()
        assert (first.turn, second.turn) == (1, 2)
        history = client.stub(chat_pb2_grpc.ChatStub).History(
            chat_pb2.HistoryRequest(), session_key="conv", idempotent=True
        )
        assert [t.prompt for t in history.turns] == ["first", "second"]
    finally:
        client.close()
        shard.stop()


def test_an_etcd_outage_is_latency_for_a_turn_begun_during_it(etcd_server: EtcdServer) -> None:
    shard = ChatShard(
        shard_id="a", service="chat", etcd=etcd_server.endpoint, lease_ttl_s=2, token_delay_s=0
    ).start()
    client = ShardClient.connect(etcd_server.endpoint, "chat")
    try:
        client.source.wait_for(lambda t: "a" in t.shards)
        assert _turn(client, "conv", "before").turn == 1
        etcd_server.stop()
        # The shard no longer trusts its lease: it serves nothing from memory.
        wait_until(lambda: shard._lease_id() is None, 15)
        calls = shard.accounting.calls_total
        with futures.ThreadPoolExecutor(1) as pool:
            during = pool.submit(_turn, client, "conv", "during")
            # Refused (nothing executed) and sent again at least once while etcd is down.
            wait_until(lambda: shard.accounting.calls_total >= calls + 2, 15)
            assert not during.done()
            etcd_server.start()
            token = during.result()
        assert token.turn == 2
        assert _turn(client, "conv", "after").turn == 3
    finally:
        client.close()
        shard.stop()
