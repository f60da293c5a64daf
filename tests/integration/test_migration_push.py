"""The source pushes a move's state into the target itself (``push_to``, issue 15): the
bytes cross once instead of through the mover. A source that predates it, a push that
fails and a ``push_to`` that is not the fence's target all leave the export as it was
(the mover imports the chunks). Real etcd, real chat shards in this process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chat_calls import WarmedChat, history, turn

from shardroute import ShardClient
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import Refused
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.sessions import Migrator, OverrideStore
from shardroute.sessions.overrides import next_override
from shardroute.testing.waiting import wait_until

K = "conv-push"


Trio = tuple[dict[str, WarmedChat], ShardClient, Migrator]


@pytest.fixture
def trio(etcd_endpoint: str) -> Iterator[Trio]:
    common: dict[str, Any] = {"service": "chat", "etcd": etcd_endpoint, "token_delay_s": 0}
    with (
        WarmedChat(shard_id="a", **common) as a,
        WarmedChat(shard_id="b", **common) as b,
        WarmedChat(shard_id="c", **common) as c,
    ):
        shards = {"a": a, "b": b, "c": c}
        source = EtcdTopologySource(etcd_endpoint, "chat")
        source.start()
        try:
            for topology in (source.current, *(lambda s=s: s.topology for s in shards.values())):
                wait_until(lambda t=topology: set(shards) <= set(t().shards))
            mover = Migrator(EtcdClient(source.options), "chat", source, close_etcd=True)
            with ShardClient(source) as client, mover:
                yield shards, client, mover
        finally:
            source.close()


def _imports(mover: Migrator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The imports the mover makes itself (not pushed by the source)."""
    made: list[str] = []
    original = mover._calls.import_warm

    def counted(session_key: str, epoch: int, target: Any, state: Any, *args: Any) -> None:
        if state.pushed < 0:  # else the call only records the pushed steps
            made.append(session_key)
        original(session_key, epoch, target, state, *args)

    monkeypatch.setattr(mover._calls, "import_warm", counted)
    return made


def _placed(trio: Trio) -> tuple[WarmedChat, WarmedChat]:
    shards, client, _ = trio
    owner = turn(client, K, "first words").shard_id
    other = next(s for s in sorted(shards) if s != owner)
    return shards[owner], shards[other]


def _started(
    trio: Trio, monkeypatch: pytest.MonkeyPatch
) -> tuple[ShardClient, Migrator, WarmedChat, WarmedChat, list[str]]:
    """K placed on a shard: the client, the mover, K's owner, another shard, and the
    imports the mover makes itself from here on."""
    _, client, mover = trio
    source, target = _placed(trio)
    return client, mover, source, target, _imports(mover, monkeypatch)


def test_the_source_pushes_the_state_into_the_target(
    trio: Trio, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, mover, source, target, imports = _started(trio, monkeypatch)
    result = mover.migrate(K, target=target.shard_id)
    assert imports == []  # the bytes went source -> target
    assert (result.source, result.target) == (source.shard_id, target.shard_id)
    assert result.state_bytes == len(target.sessions._held[K].data) > 0
    assert not result.from_store
    assert target.warmed == [K] and source.warmed == []  # warmed once, in the push
    turn(client, K, "second")
    assert history(client, K) == ["first words", "second"]
    assert turn(client, K, "third").shard_id == target.shard_id


def test_a_source_that_predates_push_streams_and_the_mover_imports(
    trio: Trio, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, mover, source, target, imports = _started(trio, monkeypatch)
    answers = source._answers
    original = answers.export_chunks

    def old_export(request: Any, time_remaining: float | None = None) -> list[Any]:
        request.push_to = ""  # what a shard that predates the field reads
        return original(request, time_remaining)

    monkeypatch.setattr(answers, "export_chunks", old_export)
    mover.migrate(K, target=target.shard_id)
    assert imports == [K] and target.warmed == [K]
    assert history(client, K) == ["first words"]


def test_a_push_that_fails_leaves_the_import_to_the_mover(
    trio: Trio, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, mover, _, target, imports = _started(trio, monkeypatch)
    answers = target._answers
    original = answers.import_assembled
    refused: list[str] = []

    def refuse_once(assembler: Any) -> Any:
        if not refused:
            refused.append(assembler.session_key)
            raise Refused(grpc.StatusCode.UNAVAILABLE, "not now (test)")
        return original(assembler)

    monkeypatch.setattr(answers, "import_assembled", refuse_once)
    with caplog.at_level(logging.WARNING, "shardroute.server"):
        result = mover.migrate(K, target=target.shard_id)
    assert refused == [K] and imports == [K]  # refused from the source, then the mover's
    assert result.target == target.shard_id
    assert f"push of session {K} to {target.shard_id} failed" in caplog.text
    turn(client, K, "second")
    assert history(client, K) == ["first words", "second"]


def test_the_source_pushes_only_to_the_fences_target(trio: Trio, etcd_endpoint: str) -> None:
    """An export naming another ``push_to`` than the fence's target streams the chunks to
    its caller; that other shard gets nothing."""
    shards, client, _ = trio
    source, target = _placed(trio)
    stranger = next(s for s in shards.values() if s not in (source, target))
    etcd = EtcdClient(EtcdOptions(endpoints=(etcd_endpoint,)))
    try:
        overrides = OverrideStore(etcd, "chat")
        current = overrides.get(K)
        fence = overrides.swap(
            K, current, next_override(current, source.shard_id, moving_to=target.shard_id)
        )
        assert fence is not None
        with grpc.insecure_channel(source.address) as channel:
            control = shard_pb2_grpc.ShardControlStub(channel)
            request = shard_pb2.ExportSessionRequest(
                session_key=K, epoch=fence.epoch, push_to=stranger.shard_id
            )
            chunks = list(control.ExportSession(request))
            assert chunks and not any(c.pushed for c in chunks) and chunks[-1].last
            assert b"first words" in b"".join(c.data for c in chunks)
            assert K not in stranger.sessions and K not in target.sessions
            back = overrides.swap(K, fence, next_override(fence, source.shard_id))  # roll back
            assert back is not None
            control.ReleaseSession(
                shard_pb2.ReleaseSessionRequest(session_key=K, epoch=back.epoch, new_owner="")
            )
    finally:
        etcd.close()
    turn(client, K, "second")
    assert history(client, K) == ["first words", "second"]
