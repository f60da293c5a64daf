"""The short path of a move (issue 15): the import warms the session in the same call,
the release is sent after the commit and not waited for. Each still fenced in etcd; an
older shard (no warm in its import) and a release that fails are handled. Real etcd,
real chat shards in this process (so their control answers can be wrapped)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chat_calls import WarmedChat, history, turn

from shardroute import ShardClient
from shardroute._proto import shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import CallFailed, MigrationFailed, Refused
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import ChatShard
from shardroute.sessions import EtcdSessionStore, Migrator, OverrideStore
from shardroute.sessions.chunks import split_chunks
from shardroute.sessions.overrides import next_override
from shardroute.testing.waiting import wait_until

Pair = tuple[WarmedChat, WarmedChat, ShardClient, Migrator]


@pytest.fixture
def pair(etcd_endpoint: str) -> Iterator[Pair]:
    common: dict[str, Any] = {"service": "chat", "etcd": etcd_endpoint, "token_delay_s": 0}
    with WarmedChat(shard_id="a", **common) as a, WarmedChat(shard_id="b", **common) as b:
        source = EtcdTopologySource(etcd_endpoint, "chat")
        source.start()
        try:
            for topology in (source.current, lambda: a.topology, lambda: b.topology):
                wait_until(lambda t=topology: {"a", "b"} <= set(t().shards))
            mover = Migrator(EtcdClient(source.options), "chat", source, close_etcd=True)
            with ShardClient(source) as client, mover:
                yield a, b, client, mover
        finally:
            source.close()


def _placed(pair: Pair, key: str) -> tuple[WarmedChat, WarmedChat]:
    """Start ``key`` with one turn; its owner and the other shard."""
    a, b, client, _ = pair
    turn(client, key, "first words")
    owner = a if client.route(key).shard.id == "a" else b
    return owner, (b if owner is a else a)


def test_the_import_warms_in_the_same_call_and_a_stale_epoch_warms_nothing(
    pair: Pair,
) -> None:
    _, _, client, mover = pair
    key = "conv-warm"
    source, target = _placed(pair, key)
    result = mover.migrate(key, target=target.shard_id)
    assert result.target == target.shard_id
    assert target.warmed == [key] and source.warmed == []  # once, in the import
    assert history(client, key) == ["first words"]
    # The same import replayed at the move's fence epoch (now past: the commit moved the
    # override on) is refused before anything is imported or warmed.
    fence_epoch = result.epoch - 1
    channel = grpc.insecure_channel(source.address)
    with channel, pytest.raises(grpc.RpcError) as refused:
        shard_pb2_grpc.ShardControlStub(channel).ImportSession(
            split_chunks(key, fence_epoch, b'[["planted","x"]]', 1024, warm=True)
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert source.warmed == [] and key not in source.sessions
    assert history(client, key) == ["first words"]


def test_a_shard_whose_import_does_not_warm_gets_warm_session(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target older than the ``warm`` field answers ``warmed = false``: the mover then
    sends ``WarmSession``, fenced as before."""
    _, _, client, mover = pair
    key = "conv-old-target"
    _, target = _placed(pair, key)
    answers = target._answers
    old_import, old_warm = answers.import_assembled, answers.warm
    warm_calls: list[str] = []

    def import_ignoring_warm(assembler: Any) -> Any:
        assembler.warm = False  # what a shard that predates the field reads
        return old_import(assembler)

    def counted_warm(request: Any) -> Any:
        warm_calls.append(request.session_key)
        return old_warm(request)

    monkeypatch.setattr(answers, "import_assembled", import_ignoring_warm)
    monkeypatch.setattr(answers, "warm", counted_warm)
    mover.migrate(key, target=target.shard_id)
    assert warm_calls == [key] and target.warmed == [key]
    assert history(client, key) == ["first words"]


def test_a_release_not_awaited_still_releases_and_back_and_forth_moves_work(
    pair: Pair,
) -> None:
    a, b, client, mover = pair
    key = "conv-released"
    source, target = _placed(pair, key)
    result = mover.migrate(key, target=target.shard_id)
    mover.wait_released(key)
    assert key not in source.sessions and mover.releases_failed == 0
    # Moves right after one another: each waits for this mover's previous release of the
    # session, so the next export never meets a copy still frozen by the last one.
    for n in range(4):
        here = result.target
        there = "a" if here == "b" else "b"
        result = mover.migrate(key, target=there)
        assert (result.source, result.target) == (here, there)
        turn(client, key, f"turn {n}")
    mover.wait_released()
    owner, other = (a, b) if result.target == "a" else (b, a)
    assert key in owner.sessions and key not in other.sessions
    assert history(client, key) == ["first words", "turn 0", "turn 1", "turn 2", "turn 3"]
    assert mover.releases_failed == 0


def test_a_failed_release_is_logged_counted_and_the_commit_stands(
    pair: Pair, etcd_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    _, _, client, mover = pair
    key = "conv-release-fails"
    source, target = _placed(pair, key)

    def refuse(request: Any) -> Any:
        raise Refused(grpc.StatusCode.UNAVAILABLE, "release refused by the test")

    monkeypatch.setattr(source._answers, "release", refuse)
    with caplog.at_level(logging.WARNING, logger="shardroute.migration"):
        result = mover.migrate(key, target=target.shard_id)
        mover.wait_released(key)
    assert result.target == target.shard_id
    assert mover.releases_failed == 1
    assert any(
        "release on" in r.getMessage() and "refused by the test" in r.getMessage()
        for r in caplog.records
    )
    # No release came, but the commit stands: the source drops its frozen copy once its
    # watch shows the commit, a client that still sends the session to the source is
    # redirected to the target, and the conversation continues whole there.
    wait_until(lambda: key not in source.sessions, 10, "the source dropping its frozen copy")
    with ShardClient.connect(etcd_endpoint, "chat") as stale:
        stale.source.wait_for(lambda t: {"a", "b"} <= set(t.shards), 10)
        stale.router.remember(key, source.shard_id)
        assert turn(stale, key, "after").shard_id == target.shard_id
    assert key not in source.sessions
    assert history(client, key) == ["first words", "after"]


def test_an_import_is_decoded_at_its_first_turn_and_bad_bytes_fall_back_to_the_store(
    etcd_endpoint: str, etcd: EtcdClient
) -> None:
    """A shard without a warm hook holds imported bytes undecoded (no codec on the move's
    path). Bytes that do not decode (not a shard's export, yet fenced, of the store's
    version and with a good CRC) fail that first turn with DATA_LOSS and are dropped;
    the next turn loads the session from the store, whole."""
    common: dict[str, Any] = {"service": "chat", "etcd": etcd_endpoint, "token_delay_s": 0}
    with (
        ChatShard(shard_id="a", **common) as a,
        ChatShard(shard_id="b", **common) as b,
        ShardClient.connect(etcd_endpoint, "chat") as client,
    ):
        client.source.wait_for(lambda t: {"a", "b"} <= set(t.shards), 10)
        for shard in (a, b):
            wait_until(lambda s=shard: {"a", "b"} <= set(s.topology.shards))
        key = "conv-undecodable"
        turn(client, key, "first words")
        source, target = (a, b) if client.route(key).shard.id == "a" else (b, a)
        shards = client.source.current().shards
        overrides = OverrideStore(etcd, "chat")
        fence = overrides.swap(
            key,
            overrides.get(key),
            next_override(overrides.get(key), source.shard_id, moving_to=target.shard_id),
            lease=shards[source.shard_id].lease,
        )
        assert fence is not None
        version = EtcdSessionStore(etcd, "chat").version(key)
        channel = grpc.insecure_channel(target.address)
        with channel:
            control = shard_pb2_grpc.ShardControlStub(channel)
            reply = control.ImportSession(
                split_chunks(key, fence.epoch, b"not json", 1024, version)
            )
            assert reply.state_bytes == len(b"not json") and not reply.warmed
            commit = next_override(fence, target.shard_id)
            assert commit is not None
            overrides.swap(key, fence, commit, lease=shards[target.shard_id].lease)
        wait_until(lambda: target.sessions.epoch(key) == commit.epoch)
        client.router.remember(key, target.shard_id)
        with pytest.raises(CallFailed) as lost:
            turn(client, key, "lost")
        assert lost.value.code is grpc.StatusCode.DATA_LOSS
        assert "does not decode" in lost.value.details
        assert key not in target.sessions
        assert turn(client, key, "again").shard_id == target.shard_id
        assert history(client, key) == ["first words", "again"]


def test_a_corrupt_export_is_refused_by_the_target_and_the_move_rolls_back(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mover forwards the export's chunks without checking their CRC-32: the target
    does, over the same bytes, and the move rolls back with the session whole."""
    _, _, client, mover = pair
    key = "conv-corrupt"
    source, target = _placed(pair, key)
    answers = source._answers
    export = answers.export_chunks

    def corrupted(request: Any, time_remaining: float | None = None) -> list[Any]:
        chunks = export(request, time_remaining)
        last = chunks[-1]
        last.data = bytes([last.data[0] ^ 0xFF]) + last.data[1:]
        return chunks

    monkeypatch.setattr(answers, "export_chunks", corrupted)
    with pytest.raises(MigrationFailed) as failed:
        mover.migrate(key, target=target.shard_id)
    assert "CRC-32 mismatch" in str(failed.value)
    monkeypatch.undo()
    assert key not in target.sessions and target.warmed == []
    assert not source.sessions.is_frozen(key)
    assert turn(client, key, "more").shard_id == source.shard_id
    assert history(client, key) == ["first words", "more"]
