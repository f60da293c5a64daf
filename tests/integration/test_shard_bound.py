"""The balance bound checked by the shard (``routing.shard_bound``; real etcd, real
shards): a new session reaching a shard that is over its bound by its exact load is
placed on another shard, with an override, and redirected before anything runs."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest

from shardroute import metadata
from shardroute.client import ShardClient
from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.sessions import OverrideStore
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.waiting import wait_until

CONFIG = {"routing": {"shard_bound": True, "spill_floor": 0}}


def generate(address: str, key: str, tokens: int = 1, reason: str = "") -> list[chat_pb2.Token]:
    """One turn sent straight to a shard, as a client's first attempt (reason: none)."""
    md = ((metadata.REASON, reason),) if reason else ()
    request = chat_pb2.GenerateRequest(session_key=key, prompt="hi", max_tokens=tokens)
    with grpc.insecure_channel(address) as channel:
        return list(chat_pb2_grpc.ChatStub(channel).Generate(request, metadata=md, timeout=30))


@pytest.mark.parametrize("bound", [True, False])
def test_a_new_session_at_a_shard_over_its_bound_is_placed_on_another(
    etcd_server: EtcdServer, bound: bool
) -> None:
    endpoint = etcd_server.endpoint
    etcd = EtcdClient(EtcdOptions(endpoints=(endpoint,)))
    if bound:
        etcd.put(KeySchema("chat").config, json.dumps(CONFIG).encode())
    shards = [
        ChatShard(shard_id=s, service="chat", etcd=endpoint, token_delay_s=0.2).start()
        for s in "abc"
    ]
    a = shards[0]
    pool = futures.ThreadPoolExecutor(2)
    try:
        wait_until(lambda: all(len(s.topology or ()) == 3 for s in shards), 10)
        wait_until(lambda: (a.topology is not None and a.topology.config is not None) == bound, 10)
        # a holds two long turns of sessions it already has (a session with state is
        # never checked); the others hold nothing. Its own exact load (2, this call
        # aside) reaches 1.25 x (2 + 1) / 3: full for one more.
        for i in range(2):
            wait_until(lambda: a.accounting.load_now() == 0, 10)
            assert generate(a.address, f"busy-{i}")[-1].shard_id == "a"  # a idle: taken
        busy = [pool.submit(generate, a.address, f"busy-{i}", 40) for i in range(2)]
        wait_until(lambda: a.accounting.inflight == 2, 10)
        if not bound:  # off (the default): a takes the new session
            assert generate(a.address, "new")[-1].shard_id == "a"
            assert OverrideStore(etcd, "chat").get("new") is None
            return
        with pytest.raises(grpc.RpcError) as refused:
            generate(a.address, "new")
        error = refused.value
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        target = dict(error.trailing_metadata() or ())[metadata.REDIRECT]
        assert target in ("b", "c") and "over its balance bound" in (error.details() or "")
        # nothing written yet: a redirect the client never follows leaves no key
        assert OverrideStore(etcd, "chat").get("new") is None
        assert a.sessions.placed_elsewhere_total == 1 and "new" not in a.sessions
        # the client follows the redirect: the shard named takes it without checking,
        # and its first save writes the override naming it
        reply = generate(shards["abc".index(target)].address, "new", reason="redirect")
        assert reply[-1].shard_id == target
        found = OverrideStore(etcd, "chat").get("new")
        assert found is not None and found.owner == target
        # a call that followed a redirect or failed over is never sent on again (a client
        # follows one redirect per call), even here, over the bound
        for reason in ("redirect", "failover"):
            assert generate(a.address, f"new-{reason}", reason=reason)[-1].shard_id == "a"
        assert a.sessions.placed_elsewhere_total == 1
        # and a client that follows overrides goes there at once
        with ShardClient.connect(endpoint, "chat", timeout=10, follow_overrides=True) as c:
            c.source.wait_for(lambda t: "new" in t.overrides, 10)
            assert c.route("new").shard.id == target
        for f in busy:
            assert f.result(timeout=30)[-1].shard_id == "a"  # their turns ran on
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for s in shards:
            s.stop(0)
        etcd.close()
