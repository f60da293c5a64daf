"""Even an admitted caller of the control service moves only what a mover fenced in etcd
(docs/security.md): made-up epochs refused, frozen sessions thawed after a bound, and
bounded imports. Real etcd, real chat shards (the calls come from this machine, so the
control service admits them: what stops them here is etcd)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chat_calls import history, turn

from shardroute import ShardClient
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import Refused
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import ChatShard
from shardroute.model import Override, Topology
from shardroute.server import SessionHost
from shardroute.sessions import EtcdSessionStore, OverrideStore
from shardroute.sessions._host_base import FREEZE_LIMIT_S
from shardroute.sessions.chunks import max_chunks, split_chunks
from shardroute.testing.waiting import wait_until

HUGE = 2**64 - 1


@pytest.fixture
def pair(etcd_endpoint: str) -> Iterator[tuple[ChatShard, ChatShard, ShardClient]]:
    common: dict[str, Any] = {"service": "chat", "etcd": etcd_endpoint, "token_delay_s": 0}
    with ChatShard(shard_id="a", **common) as a, ChatShard(shard_id="b", **common) as b:
        source = EtcdTopologySource(etcd_endpoint, "chat")
        source.start()
        try:
            for topology in (source.current, lambda: a.topology, lambda: b.topology):
                wait_until(lambda t=topology: {"a", "b"} <= set(t().shards))
            with ShardClient(source) as client:
                yield a, b, client
        finally:
            source.close()


def _control(shard: ChatShard) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(shard.address)
    return channel, shard_pb2_grpc.ShardControlStub(channel)


def test_made_up_epochs_are_refused_and_nothing_changes(
    pair: tuple[ChatShard, ChatShard, ShardClient],
) -> None:
    a, b, client = pair
    key = "conv-fenced"
    turn(client, key, "private words")
    owner = a if client.route(key).shard.id == "a" else b
    other = b if owner is a else a
    channel, control = _control(owner)
    other_channel, other_control = _control(other)
    with channel, other_channel:
        for call in (
            # Export of a held session: before, it froze the session for good.
            lambda: list(
                control.ExportSession(shard_pb2.ExportSessionRequest(session_key=key, epoch=HUGE))
            ),
            # Export from a shard that does not hold it: before, it loaded it from the
            # store and returned the conversation's text.
            lambda: list(
                other_control.ExportSession(
                    shard_pb2.ExportSessionRequest(session_key=key, epoch=HUGE)
                )
            ),
            # A release naming a stranger: before, it planted a hint that outranked every
            # real override and sent the session's calls away.
            lambda: control.ReleaseSession(
                shard_pb2.ReleaseSessionRequest(session_key=key, epoch=HUGE, new_owner="evil")
            ),
            lambda: other_control.ImportSession(
                split_chunks(key, HUGE, b'[{"prompt":"planted"}]', 1024)
            ),
            lambda: other_control.WarmSession(
                shard_pb2.WarmSessionRequest(session_key=key, epoch=HUGE)
            ),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "refused" in (refused.value.details() or "")
    assert not owner.sessions.is_frozen(key)
    assert key not in other.sessions
    turn(client, key, "more words")  # served at once, where it was, with its history
    assert history(client, key) == ["private words", "more words"]
    assert client.route(key).shard.id == owner.shard_id
    assert client.stats.snapshot().get("redirects", 0) == 0
    # A real move (fenced in etcd) still goes through.
    result = client.migrate(key, other.shard_id)
    assert result.target == other.shard_id
    assert history(client, key) == ["private words", "more words"]


def test_imports_are_bounded(pair: tuple[ChatShard, ChatShard, ShardClient]) -> None:
    a, _, _ = pair
    limit = a.sessions.max_state_bytes
    channel, control = _control(a)
    key = "conv-big"
    with channel:
        oversized = [
            shard_pb2.SessionChunk(
                session_key=key, epoch=1, offset=0, data=b"x", total_bytes=limit + 1
            )
        ]
        empty = [
            shard_pb2.SessionChunk(session_key=key, epoch=1, offset=0, data=b"", total_bytes=10),
            *split_chunks(key, 1, b"0123456789", 1024),
        ]
        total = 20_000
        tiny = [
            shard_pb2.SessionChunk(session_key=key, epoch=1, offset=i, data=b"x", total_bytes=total)
            for i in range(max_chunks(total) + 1)
        ]
        for chunks, words in ((oversized, "over"), (empty, "empty chunk"), (tiny, "chunks")):
            with pytest.raises(grpc.RpcError) as refused:
                control.ImportSession(iter(chunks))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert words in (refused.value.details() or "")
    assert key not in a.sessions


def test_a_freeze_without_commit_ends_after_the_bound(etcd_endpoint: str) -> None:
    """A mover that fenced, exported (freezing the session) and died: past
    ``FREEZE_LIMIT_S`` the frozen copy is dropped even with no turn coming, and the next
    turn reclaims the session from the store, whole."""
    etcd = EtcdClient(EtcdOptions((etcd_endpoint,)))
    try:
        store, overrides = EtcdSessionStore(etcd, "chat"), OverrideStore(etcd, "chat")
        now = [1000.0]
        host = SessionHost("A", hold_timeout_s=0.2, clock=lambda: now[0])

        def topology() -> Topology:
            known = overrides.get("k")
            return Topology(
                "chat",
                shards={"A": object(), "T": object()},  # type: ignore[dict-item]
                overrides={} if known is None else {"k": known},
            )

        host.attach(store, overrides=overrides, topology=topology)

        def one_turn(text: str) -> None:
            entry = host.begin("k", None)
            try:
                host.checkpoint("k", entry, [*(entry.state or []), text])
            finally:
                host.end("k", entry)

        one_turn("t1")
        fence = overrides.swap("k", overrides.get("k"), Override("A", 5, "T"))
        assert fence is not None
        with pytest.raises(Refused):
            host.verify_move("k", fence.epoch + 1, "export")  # not the fence's epoch
        host.verify_move("k", fence.epoch, "export")
        host.export("k", fence.epoch)
        assert host.is_frozen("k")
        now[0] += FREEZE_LIMIT_S / 2
        assert host.evict_idle() == 0 and host.is_frozen("k")
        now[0] += FREEZE_LIMIT_S
        assert host.evict_idle() == 1
        assert "k" not in host
        one_turn("t2")  # reclaims the abandoned fence and loads the state from the store
        current = overrides.get("k")
        assert current is not None and (current.owner, current.moving_to) == ("A", "")
        stored = store.load("k")
        assert stored is not None and host.codec.decode(stored.data) == ["t1", "t2"]
        host.close()
    finally:
        etcd.close()
