"""A shard started while etcd is down (``wait_for_etcd=True``) steals no session: it
follows the topology once etcd is back and, until then, takes nothing over (issue 14).

Real etcd (stopped and started again), real chat shards in this process."""

from __future__ import annotations

import grpc
import pytest

from shardroute import metadata
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.model import Override
from shardroute.sessions import EtcdSessionStore, OverrideStore
from shardroute.testing import EtcdServer
from shardroute.testing.waiting import wait_until

KEY = "conv-owned-by-a"


def _turn(address: str, prompt: str) -> grpc.Call | list[chat_pb2.Token]:
    """One turn sent straight to the shard at ``address`` as a client whose ring names it
    the session's home (no reason metadata)."""
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=2)
        md = ((metadata.SESSION_KEY, KEY),)
        return list(stub.Generate(request, metadata=md, timeout=10))


def test_shard_started_while_etcd_is_down_takes_over_nothing_and_follows_it_later(
    etcd_server: EtcdServer,
) -> None:
    endpoint = etcd_server.endpoint
    owner = ChatShard(shard_id="a", service="chat", etcd=endpoint, token_delay_s=0).start()
    late: ChatShard | None = None
    try:
        _turn(owner.address, "hello")  # a holds the session, its state is stored
        # A mover placed the session on a: an override under a's lease.
        etcd = EtcdClient(owner.config.etcd_options())
        topology = owner.topology
        assert topology is not None and topology.shards["a"].lease
        lease = topology.shards["a"].lease
        placed = OverrideStore(etcd, "chat").swap(KEY, None, Override("a", 1), lease=lease)
        stored_before = EtcdSessionStore(etcd, "chat").load(KEY)
        assert stored_before is not None

        etcd_server.stop()
        late = ChatShard(
            shard_id="b",
            service="chat",
            etcd=endpoint,
            wait_for_etcd=True,
            etcd_timeout_s=1.0,
            token_delay_s=0,
        ).start()
        # No topology yet: the session is refused, nothing executed.
        with pytest.raises(grpc.RpcError) as refused:
            _turn(late.address, "while etcd is down")
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "nothing was executed" in (refused.value.details() or "")

        etcd_server.start()
        # Today's bug: the topology source was closed for good, b never saw a.
        wait_until(
            lambda: (
                late is not None
                and late.topology is not None
                and {"a", "b"} <= set(late.topology.shards)
            ),
            20,
        )
        wait_until(lambda: late is not None and late._lease_id() is not None, 20)
        with pytest.raises(grpc.RpcError) as redirected:
            _turn(late.address, "to the wrong shard")
        assert redirected.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        trailers = redirected.value.trailing_metadata()
        assert metadata.get(trailers, metadata.REDIRECT) == "a"
        # Nothing was stolen: the override and the state are a's, unchanged.
        assert OverrideStore(etcd, "chat").get(KEY) == placed
        stored = EtcdSessionStore(etcd, "chat").load(KEY)
        etcd.close()
        assert stored is not None and stored.owner == "a"
        assert stored.version == stored_before.version
        tokens = _turn(owner.address, "back home")
        assert isinstance(tokens, list) and tokens[-1].turn == 2
    finally:
        if late is not None:
            late.stop()
        owner.stop()
