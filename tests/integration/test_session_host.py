"""The shard side of moving sessions, against real etcd and real gRPC (docs/migration.md):
write-through checkpoints, redirects, holds, take-over, export/import, shard death.

Every test runs on both shells (``ShardServer`` and ``AsyncShardServer``)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import etcd3
import grpc
import pytest
from shells import CHAT_CLASSES, Shell

from shardroute import metadata
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import AsyncChatShard, ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.model import Override
from shardroute.server import AsyncShardServer, ShardServer
from shardroute.sessions import EtcdSessionStore, InMemorySessionStore, OverrideStore
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.waiting import wait_until

Chat = ChatShard | AsyncChatShard


@pytest.fixture
def etcd(etcd_endpoint: str) -> Iterator[EtcdClient]:
    client = EtcdClient(EtcdOptions(endpoints=(etcd_endpoint,)))
    yield client
    client.close()


@pytest.fixture
def pair_shells(etcd_endpoint: str, kind: str) -> Iterator[tuple[Shell, Shell]]:
    """Two chat shards in this process (of the ``kind`` shell), registered in etcd, each
    seeing the other."""
    with (
        Shell(kind, shard_id="a", service="chat", etcd=etcd_endpoint, token_delay_s=0) as a,
        Shell(kind, shard_id="b", service="chat", etcd=etcd_endpoint, token_delay_s=0) as b,
    ):
        for shell in (a, b):
            shell.start()
        for shard in (a.server, b.server):
            wait_until(lambda s=shard: {"a", "b"} <= set(s.topology.shards))
        yield a, b


@pytest.fixture
def pair(pair_shells: tuple[Shell, Shell]) -> tuple[Chat, Chat]:
    """The two servers of :func:`pair_shells`."""
    a, b = pair_shells
    return a.server, b.server


def _generate(address: str, key: str, prompt: str = "hi", **md: str) -> list[Any]:
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        request = chat_pb2.GenerateRequest(session_key=key, prompt=prompt, max_tokens=6)
        return list(stub.Generate(request, metadata=tuple(md.items())))


def _generate_error(address: str, key: str, **md: str) -> tuple[grpc.RpcError, list[Any]]:
    received: list[Any] = []
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        request = chat_pb2.GenerateRequest(session_key=key, prompt="hi there", max_tokens=6)
        try:
            for token in stub.Generate(request, metadata=tuple(md.items())):
                received.append(token)
        except grpc.RpcError as exc:
            return exc, received
    raise AssertionError(f"expected an error, got {len(received)} tokens")


def _control(address: str) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(address)
    return channel, shard_pb2_grpc.ShardControlStub(channel)


def _trailer(exc: grpc.RpcError, key: str) -> str | None:
    return metadata.get(exc.trailing_metadata(), key)  # type: ignore[attr-defined]


def _lease_of(server: ShardServer | AsyncShardServer) -> int:
    lease = server._lease_id()  # the registrar's lease
    assert lease
    return lease


# -- write-through checkpoint ------------------------------------------------------------


def test_every_answered_turn_is_in_the_store_before_its_last_token(
    pair: tuple[Chat, Chat], etcd: EtcdClient
) -> None:
    a, _ = pair
    store = EtcdSessionStore(etcd, "chat")
    for turn in (1, 2):
        tokens = _generate(a.address, "w", f"turn {turn}")
        assert tokens[-1].turns_held == turn
        stored = store.load("w")
        assert stored is not None and stored.owner == "a"
        assert len(a.sessions.codec.decode(stored.data)) == turn


def test_a_lost_checkpoint_cas_aborts_before_the_last_token_and_drops_the_copy(
    pair: tuple[Chat, Chat], etcd: EtcdClient
) -> None:
    a, _ = pair
    _generate(a.address, "c")
    store = EtcdSessionStore(etcd, "chat")
    stored = store.load("c")
    assert stored is not None and "c" in a.sessions
    store.save("c", b'[["elsewhere","x"]]', owner="zz", expected_version=stored.version)
    error, tokens = _generate_error(a.address, "c")
    assert error.code() is grpc.StatusCode.ABORTED
    assert len(tokens) == 5  # all but the last of 6 tokens
    assert "c" not in a.sessions and a.sessions.conflicts_total == 1
    after = store.load("c")
    assert after is not None and after.owner == "zz"  # the other writer's state stands


def test_state_over_the_store_limit_is_resource_exhausted(kind: str) -> None:
    store = InMemorySessionStore(max_bytes=32)
    with Shell(kind, shard_id="s", service="chat", etcd=None, session_store=store).start() as s:
        shard = s.server
        error, tokens = _generate_error(shard.address, "big")
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the store's limit of 32 bytes" in (error.details() or "")
        assert len(tokens) == 5 and store.load("big") is None and "big" not in shard.sessions


# -- redirect, hold, take-over -------------------------------------------------------------


def test_a_session_owned_elsewhere_is_redirected_and_nothing_executes(
    pair: tuple[Chat, Chat], etcd: EtcdClient
) -> None:
    a, b = pair
    OverrideStore(etcd, "chat").swap("r", None, Override("b", 1), lease=_lease_of(b))
    wait_until(lambda: "r" in a.topology.overrides)  # type: ignore[union-attr]
    error, tokens = _generate_error(a.address, "r")
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert _trailer(error, metadata.REDIRECT) == "b" and tokens == []
    assert EtcdSessionStore(etcd, "chat").load("r") is None and "r" not in a.sessions
    assert a.sessions.redirects_total == 1


def _fence(etcd: EtcdClient, a: Chat, key: str) -> Override:
    """What a mover does first: the override names a, moving to b."""
    overrides = OverrideStore(etcd, "chat")
    fenced = overrides.swap(key, overrides.get(key), Override("a", 1, "b"), lease=_lease_of(a))
    assert fenced is not None
    wait_until(lambda: key in a.topology.overrides)  # type: ignore[union-attr]
    return fenced


def _start_held_call(a: Chat, key: str) -> futures.Future[Any]:
    pool = futures.ThreadPoolExecutor(1)
    inflight = a.accounting.inflight
    future = pool.submit(lambda: _generate_error_or_tokens(a.address, key))
    pool.shutdown(wait=False)
    wait_until(lambda: a.accounting.inflight == inflight + 1)  # the call is in, waiting
    return future


def _generate_error_or_tokens(address: str, key: str) -> Any:
    try:
        return _generate(address, key)
    except grpc.RpcError as exc:
        return exc


def test_a_held_call_is_redirected_when_the_move_commits(
    pair: tuple[Chat, Chat], etcd: EtcdClient
) -> None:
    a, b = pair
    _generate(a.address, "h")
    fenced = _fence(etcd, a, "h")
    held = _start_held_call(a, "h")
    assert not held.done()
    OverrideStore(etcd, "chat").swap("h", fenced, Override("b", 2), lease=_lease_of(b))
    channel, control = _control(a.address)
    with channel:  # (the watch may have delivered the commit first: the copy is gone)
        control.ReleaseSession(
            shard_pb2.ReleaseSessionRequest(session_key="h", epoch=2, new_owner="b")
        )
    result = held.result(timeout=10)
    assert isinstance(result, grpc.RpcError)
    assert result.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert _trailer(result, metadata.REDIRECT) == "b"
    assert "h" not in a.sessions


def test_a_held_call_is_served_when_the_move_rolls_back(
    pair: tuple[Chat, Chat], etcd: EtcdClient
) -> None:
    a, _ = pair
    _generate(a.address, "h")
    fenced = _fence(etcd, a, "h")
    held = _start_held_call(a, "h")
    OverrideStore(etcd, "chat").swap("h", fenced, Override("a", 2), lease=_lease_of(a))
    channel, control = _control(a.address)
    with channel:
        control.ReleaseSession(shard_pb2.ReleaseSessionRequest(session_key="h", epoch=2))
    tokens = held.result(timeout=10)
    assert not isinstance(tokens, grpc.RpcError)
    assert tokens[-1].turns_held == 2 and tokens[-1].shard_id == "a"


def test_a_hold_on_an_abandoned_fence_reclaims_the_session_after_hold_timeout(
    etcd_endpoint: str, etcd: EtcdClient, kind: str
) -> None:
    with Shell(
        kind, shard_id="a", service="chat", etcd=etcd_endpoint, token_delay_s=0, hold_timeout_s=0.3
    ).start() as shell:
        a = shell.server
        wait_until(lambda: "a" in a.topology.shards)  # type: ignore[union-attr]
        _generate(a.address, "t")
        fenced = _fence(etcd, a, "t")  # the mover fenced, then died
        tokens = _generate(a.address, "t")  # held 0.3 s, then a reclaims it and serves
        assert (tokens[-1].turns_held, tokens[-1].shard_id) == (2, "a")
        override = OverrideStore(etcd, "chat").get("t")
        assert override is not None
        assert (override.owner, override.epoch, override.moving_to) == ("a", fenced.epoch + 1, "")
        assert a.sessions.reclaims_total == 1


def test_take_over_swaps_the_override_with_epoch_plus_one_on_its_own_lease(
    pair: tuple[Chat, Chat], etcd: EtcdClient, etcd_endpoint: str
) -> None:
    a, b = pair
    _generate(a.address, "t")
    _generate(a.address, "t")
    # The client failed over to b on purpose (a looked down): b takes the session over.
    tokens = _generate(b.address, "t", **{metadata.REASON: "failover"})
    assert tokens[-1].turns_held == 3 and tokens[-1].shard_id == "b"
    override = OverrideStore(etcd, "chat").get("t")
    assert override is not None and override.owner == "b"
    first_epoch = override.epoch
    host, _, port = etcd_endpoint.rpartition(":")
    raw = etcd3.client(host=host, port=int(port))
    try:
        _, meta = raw.get("/shardroute/chat/sessions/t")
        assert meta.lease_id == _lease_of(b)
    finally:
        raw.close()
    # The record carries the lease too, so movers can attach overrides to it.
    wait_until(lambda: a.topology.shards["b"].lease == _lease_of(b))  # type: ignore[union-attr]
    # a now redirects its own stale copy to b (and drops it).
    wait_until(lambda: "t" in a.topology.overrides)  # type: ignore[union-attr]
    error, _ = _generate_error(a.address, "t")
    assert _trailer(error, metadata.REDIRECT) == "b" and "t" not in a.sessions
    # Another failover back to a: epoch + 1, on a's lease.
    tokens = _generate(a.address, "t", **{metadata.REASON: "failover"})
    assert tokens[-1].turns_held == 4
    override = OverrideStore(etcd, "chat").get("t")
    assert override is not None and (override.owner, override.epoch) == ("a", first_epoch + 1)


# -- export / import ----------------------------------------------------------------------


class _Blob:
    """A shard whose session state is raw bytes (mixed into either shell)."""

    sessions: Any

    class Codec:
        def encode(self, state: bytes) -> bytes:
            return state

        def decode(self, data: bytes) -> bytes:
            return data

        def empty(self) -> bytes:
            return b""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(  # type: ignore[call-arg]
            service="blob",
            etcd=None,
            session_codec=self.Codec(),
            session_store=InMemorySessionStore(max_bytes=16 * 1024 * 1024),
            **kwargs,
        )
        self.warmed: list[str] = []

    def warm_session(self, session_key: str, state: Any) -> None:
        self.warmed.append(session_key)

    def put(self, key: str, data: bytes) -> None:
        entry = self.sessions.begin(key)
        try:
            self.sessions.checkpoint(key, entry, data)
        finally:
            self.sessions.end(key, entry)


class BlobShard(_Blob, ShardServer):
    pass


class AsyncBlobShard(_Blob, AsyncShardServer):
    pass


def blob_shell(kind: str, shard_id: str) -> Shell:
    """A started blob shard on the ``kind`` shell."""
    cls = BlobShard if kind == "sync" else AsyncBlobShard
    return Shell(kind, cls=cls, shard_id=shard_id).start()


def _transfer(source: Any, target: Any, key: str, epoch: int) -> list[Any]:
    s_channel, s_control = _control(source.address)
    t_channel, t_control = _control(target.address)
    with s_channel, t_channel:
        chunks = list(
            s_control.ExportSession(shard_pb2.ExportSessionRequest(session_key=key, epoch=epoch))
        )
        reply = t_control.ImportSession(iter(chunks))
        assert reply.state_bytes == chunks[-1].total_bytes and reply.session_key == key
        return chunks


def test_export_import_of_5_mib_between_two_shards(kind: str) -> None:
    data = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    with blob_shell(kind, "src") as src, blob_shell(kind, "dst") as dst:
        source, target = src.server, dst.server
        source.put("blob", data)
        chunks = _transfer(source, target, "blob", 1)
        assert len(chunks) == 5 and all(len(c.data) <= 1024 * 1024 for c in chunks)
        assert chunks[-1].crc32 == zlib.crc32(data) and chunks[-1].total_bytes == len(data)
        assert source.sessions.is_frozen("blob")
        assert target.sessions.peek("blob") == data
        channel, control = _control(target.address)
        with channel:
            warm = control.WarmSession(shard_pb2.WarmSessionRequest(session_key="blob", epoch=1))
        assert warm.warmed and target.warmed == ["blob"]
        # A corrupted chunk is refused: DATA_LOSS, nothing imported.
        bad = [shard_pb2.SessionChunk.FromString(c.SerializeToString()) for c in chunks]
        bad[2].data = bytes([bad[2].data[0] ^ 0xFF]) + bad[2].data[1:]
        channel, stub = _control(target.address)
        with channel, pytest.raises(grpc.RpcError) as caught:
            stub.ImportSession(iter([_renamed(c, "bad") for c in bad]))
        assert caught.value.code() is grpc.StatusCode.DATA_LOSS
        assert target.sessions.peek("bad") is None


def _renamed(chunk: Any, key: str) -> Any:
    copy = shard_pb2.SessionChunk.FromString(chunk.SerializeToString())
    copy.session_key = key
    return copy


def test_export_refuses_a_stale_epoch_and_loads_unheld_sessions_from_the_store(
    kind: str,
) -> None:
    with blob_shell(kind, "src") as shell:
        source = shell.server
        source.put("k", b"hello")
        source.sessions.release("k", 3, "")  # this shard learned of epoch 3
        channel, control = _control(source.address)
        with channel:
            with pytest.raises(grpc.RpcError) as caught:
                list(
                    control.ExportSession(shard_pb2.ExportSessionRequest(session_key="k", epoch=2))
                )
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            source.sessions.drop("k")
            chunks = list(
                control.ExportSession(shard_pb2.ExportSessionRequest(session_key="k", epoch=3))
            )
        assert chunks[-1].data == b"hello" and not source.sessions.is_frozen("k")


def test_export_waits_for_the_in_flight_turn(kind: str) -> None:
    with blob_shell(kind, "src") as shell:
        source = shell.server
        source.put("k", b"v1")
        entry = source.sessions.begin("k")  # a turn in flight
        pool = futures.ThreadPoolExecutor(1)
        exported = pool.submit(source.sessions.export, "k", 1)
        pool.shutdown(wait=False)
        with pytest.raises(futures.TimeoutError):
            exported.result(timeout=0.2)
        source.sessions.checkpoint("k", entry, b"v2")
        source.sessions.end("k", entry)
        assert exported.result(timeout=5) == b"v2" and source.sessions.is_frozen("k")


# -- shard death ----------------------------------------------------------------------------


def test_sigkill_of_a_chat_shard_the_conversation_continues_elsewhere(
    etcd_endpoint: str, tmp_path: Any, kind: str
) -> None:
    cluster = ShardCluster(
        etcd_endpoint,
        server_class=CHAT_CLASSES[kind],
        service="chat",
        log_dir=tmp_path,
        shard_kwargs={"token_delay_s": 0},
    )
    try:
        cluster.start(2)
        first, second = cluster.shard_ids
        addresses = cluster.addresses
        for turn in (1, 2, 3):
            tokens = _generate(addresses[first], "conv", f"question {turn}")
            assert (tokens[-1].turns_held, tokens[-1].shard_id) == (turn, first)
        cluster.kill(first)
        tokens = _generate(addresses[second], "conv", "question 4", **{metadata.REASON: "failover"})
        assert (tokens[-1].turns_held, tokens[-1].shard_id) == (4, second)
        with grpc.insecure_channel(addresses[second]) as channel:
            history = chat_pb2_grpc.ChatStub(channel).History(
                chat_pb2.HistoryRequest(session_key="conv")
            )
        assert [t.prompt for t in history.turns] == [f"question {n}" for n in (1, 2, 3, 4)]
        assert history.turns[0].reply.startswith(f"[{first}] turn 1")
    finally:
        cluster.close()


def test_drain_moves_held_sessions_to_another_shard(
    pair_shells: tuple[Shell, Shell], etcd: EtcdClient
) -> None:
    a, b = (shell.server for shell in pair_shells)
    for turn in (1, 2):
        _generate(a.address, "d", f"q{turn}")
    pair_shells[0].do("drain", 5)
    override = OverrideStore(etcd, "chat").get("d")
    assert override is not None and override.owner == "b" and not override.moving_to
    assert "d" in b.sessions and len(b.sessions.peek("d")) == 2
    tokens = _generate(b.address, "d", "q3")
    assert (tokens[-1].turns_held, tokens[-1].shard_id) == (3, "b")


# -- standalone shards sharing one store ---------------------------------------------------


def test_standalone_shards_share_history_through_the_store_and_migrate(kind: str) -> None:
    store = InMemorySessionStore()
    with (
        Shell(kind, shard_id="a", service="chat", etcd=None, session_store=store).start() as sa,
        Shell(kind, shard_id="b", service="chat", etcd=None, session_store=store).start() as sb,
    ):
        a, b = sa.server, sb.server
        for turn in (1, 2):
            tokens = _generate(a.address, "k")
            assert (tokens[-1].turns_held, tokens[-1].shard_id) == (turn, "a")
        # b takes the session over from the shared store.
        tokens = _generate(b.address, "k", **{metadata.REASON: "failover"})
        assert tokens[-1].turns_held == 3
        # a's copy is now stale: its checkpoint loses the CAS, ABORTED, copy dropped.
        error, _ = _generate_error(a.address, "k")
        assert error.code() is grpc.StatusCode.ABORTED and "k" not in a.sessions
        # Export from b (freezes), import into a, release b to a: b redirects to a.
        chunks = _transfer(b, a, "k", 1)
        assert b.sessions.is_frozen("k") and chunks
        channel, control = _control(b.address)
        with channel:
            control.ReleaseSession(
                shard_pb2.ReleaseSessionRequest(session_key="k", epoch=1, new_owner="a")
            )
        error, tokens = _generate_error(b.address, "k")
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and tokens == []
        assert _trailer(error, metadata.REDIRECT) == "a"
