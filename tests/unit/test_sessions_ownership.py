"""The ownership rules of docs/migration.md, one test per rule and branch."""

from __future__ import annotations

import zlib

import pytest

from shardroute._proto import shard_pb2
from shardroute.model import Override
from shardroute.sessions import Action, OwnershipDecision, decide
from shardroute.sessions.chunks import ChunkAssembler, ChunkError, chunk_size, split_chunks
from shardroute.sessions.ownership import DELIBERATE_REASONS, epoch_is_stale, newest_override

LIVE = frozenset({"me", "other", "third"})


def _decide(
    override: Override | None = None,
    *,
    held: bool = False,
    frozen: bool = False,
    reason: str | None = None,
    live: frozenset[str] = LIVE,
) -> OwnershipDecision:
    return decide(
        shard_id="me", override=override, live=live, held=held, frozen=frozen, reason=reason
    )


@pytest.mark.parametrize("held", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("reason", [None, "memo", "affinity"])
def test_rule1_live_other_owner_redirects_an_undeliberate_call(
    held: bool, frozen: bool, reason: str | None
) -> None:
    decision = _decide(Override("other", 3), held=held, frozen=frozen, reason=reason)
    assert decision == OwnershipDecision(Action.REDIRECT, "other")


@pytest.mark.parametrize("reason", sorted(DELIBERATE_REASONS))
@pytest.mark.parametrize("held", [False, True])
def test_rule1_live_other_owner_is_taken_over_when_the_client_chose_this_shard(
    reason: str, held: bool
) -> None:
    assert _decide(Override("other", 3), held=held, reason=reason).action is Action.TAKE_OVER


def test_rule1_an_override_moving_to_this_shard_still_redirects_to_its_owner() -> None:
    assert _decide(Override("other", 4, moving_to="me"), held=True).owner == "other"


def test_rule1_does_not_apply_when_the_other_owner_is_dead() -> None:
    assert _decide(Override("gone", 3)).action is Action.TAKE_OVER
    assert _decide(Override("gone", 3), held=True).action is Action.SERVE
    assert _decide(Override("gone", 3), frozen=True).action is Action.HOLD


@pytest.mark.parametrize("held", [False, True])
@pytest.mark.parametrize("reason", [None, "failover"])
def test_rule2_a_move_off_this_shard_holds(held: bool, reason: str | None) -> None:
    assert _decide(Override("me", 5, "other"), held=held, reason=reason).action is Action.HOLD


@pytest.mark.parametrize("held", [False, True])
def test_rule2_a_frozen_session_holds(held: bool) -> None:
    assert _decide(None, held=held, frozen=True).action is Action.HOLD
    assert _decide(Override("me", 2), held=held, frozen=True).action is Action.HOLD


def test_rule3_a_held_session_is_served() -> None:
    assert _decide(None, held=True).action is Action.SERVE
    assert _decide(Override("me", 2), held=True).action is Action.SERVE
    assert _decide(Override("me", 2), held=True, reason="failover").action is Action.SERVE


def test_rule4_anything_else_is_taken_over() -> None:
    assert _decide(None).action is Action.TAKE_OVER
    assert _decide(Override("me", 2)).action is Action.TAKE_OVER
    assert _decide(None, live=frozenset()).action is Action.TAKE_OVER


def test_newest_override_prefers_the_highest_epoch_then_the_first() -> None:
    a, b = Override("x", 2), Override("y", 3)
    assert newest_override(None, None) is None
    assert newest_override(a, None, b) is b
    assert newest_override(b, Override("z", 3)) is b


def test_epoch_fencing() -> None:
    assert not epoch_is_stale(0, None)
    assert epoch_is_stale(0, Override("x", 1))
    assert epoch_is_stale(4, Override("x", 5))
    assert not epoch_is_stale(5, Override("x", 5))
    assert not epoch_is_stale(6, Override("x", 5))


# -- chunks -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5000])
def test_split_then_assemble_round_trips(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    chunks = list(split_chunks("k", 7, data, 1000))
    assert chunks[-1].last and chunks[-1].crc32 == zlib.crc32(data)
    assert all(not c.last for c in chunks[:-1]) and all(c.total_bytes == size for c in chunks)
    assembler = ChunkAssembler(10_000)
    for chunk in chunks:
        assembler.add(chunk)
    assert assembler.done and assembler.data == data
    assert (assembler.session_key, assembler.epoch) == ("k", 7)


def _assemble(chunks: list[shard_pb2.SessionChunk], limit: int = 10_000) -> ChunkError:
    assembler = ChunkAssembler(limit)
    with pytest.raises(ChunkError) as caught:
        for chunk in chunks:
            assembler.add(chunk)
    return caught.value


def test_a_corrupted_chunk_fails_the_crc() -> None:
    chunks = list(split_chunks("k", 1, b"a" * 2500, 1000))
    chunks[1].data = b"b" + chunks[1].data[1:]
    assert _assemble(chunks).corrupt


def test_gaps_size_changes_and_mixed_transfers_are_refused() -> None:
    chunks = list(split_chunks("k", 1, b"a" * 2500, 1000))
    assert "offset" in str(_assemble([chunks[0], chunks[2]]))
    other = list(split_chunks("k", 2, b"a" * 2500, 1000))
    assert "changed" in str(_assemble([chunks[0], other[1]]))
    assert "limit" in str(_assemble(chunks, limit=100))
    short = shard_pb2.SessionChunk(session_key="k", epoch=1, data=b"ab", total_bytes=3, last=True)
    assert not _assemble([short]).corrupt
    assert "after the last" in str(_assemble([*chunks, chunks[-1]]))


def test_chunk_size_stays_under_the_message_limit() -> None:
    assert chunk_size(0, 4 * 1024 * 1024) == 1024 * 1024
    assert chunk_size(8 * 1024 * 1024, 4 * 1024 * 1024) < 4 * 1024 * 1024
    assert chunk_size(100, 4 * 1024 * 1024) == 100
