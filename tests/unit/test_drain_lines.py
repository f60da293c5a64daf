"""The operator's lines of a drain and a stop (shardroute.server.drain): each session
left behind gets a plain reason that says whether a move was started; the stop line
says where the sessions are, at WARNING when they ended with the process. Also a lone
move's line and a client's ejection line, in plain words."""

from __future__ import annotations

import logging

import grpc
import pytest

from shardroute._proto import shard_pb2
from shardroute.errors import (
    EtcdUnavailable,
    LeaseNotFound,
    MigrationConflict,
    MigrationFailed,
    NoShardAvailable,
    StaleState,
)
from shardroute.server.drain import (
    DrainSummary,
    drain_counts,
    log_stop,
    move_all,
    move_reason,
    not_moved_summary,
    stop_line,
)
from shardroute.sessions import InMemorySessionStore
from shardroute.telemetry import Telemetry
from shardroute.telemetry.client import ejected
from shardroute.telemetry.migration import MigrationTrace, batched


class Denied(grpc.RpcError):
    """A shard's refusal as the mover sees it (a finished call's status code)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED


def chained(error: MigrationFailed | MigrationConflict, cause: Exception) -> Exception:
    error.__cause__ = cause
    return error


def test_each_outcome_has_a_plain_reason_and_says_whether_a_move_started() -> None:
    stale = StaleState("session 's': expected no override, but the override changed", "s")
    conflict = chained(MigrationConflict(f"session 's' changed hands: {stale}", "s"), stale)
    gone = chained(MigrationFailed("moving 's': lost lease", "s"), LeaseNotFound("x", "s"))
    cases = {
        MigrationFailed("not moved: deadline", "s", started=False): (False, "grace period"),
        NoShardAvailable("none"): (False, "no other active shard"),
        conflict: (True, "another mover or shard changed its owner first"),
        gone: (True, "target shard went away"),
        MigrationFailed("moving 's' failed", "s"): (True, "no cause given) and was rolled"),
        chained(MigrationFailed("moving 's' failed", "s"), Denied()): (
            True,
            "the move failed (a shard answered PERMISSION_DENIED) and was rolled back",
        ),
        chained(MigrationFailed("moving 's' failed", "s"), EtcdUnavailable("down")): (
            True,
            "the move failed (etcd unreachable) and was rolled back",
        ),
        EtcdUnavailable("down"): (False, "etcd was unreachable"),
    }
    for error, (started, words) in cases.items():
        tried, why = move_reason(error)  # type: ignore[arg-type]
        assert tried is started and words in why, (error, why)
        assert "expected" not in why and "Read it again" not in why


def test_the_stop_line_says_where_the_sessions_are() -> None:
    left = DrainSummary(5, 1, 2, not_moved=0, held=6)
    assert "its drain moved 5 and left 1 (0 not moved, 1 failed)" in stop_line("a", 0, left, None)
    assert "no data is lost" in stop_line("a", 3, None, None)
    assert stop_line("a", 3, DrainSummary(3, 0, 1, held=3), None).endswith("all 3 sessions it held")
    assert "in-memory session store" in stop_line("a", 3, None, InMemorySessionStore())
    assert "held no sessions" in stop_line("a", 0, None, None)


def test_a_move_in_a_batch_logs_at_debug_and_a_lone_one_reads_plainly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "shardroute.migration")
    stale = StaleState("session 's': expected no override, but the override changed", "s")
    with batched():
        MigrationTrace(Telemetry(), "s", "a", "b").finish("conflict", stale)
    MigrationTrace(Telemetry(), "s", "a", "b").finish("conflict", stale)
    batch, lone = caplog.records
    assert batch.levelno == logging.DEBUG and lone.levelno == logging.WARNING
    assert "lost to another mover or shard, nothing changed by this move" in lone.getMessage()
    assert lone.getMessage().endswith("; to move it still, run the move again")


def test_a_drain_that_cannot_move_says_so_once_and_never_promises_an_in_memory_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "shardroute.server")
    keys = [f"k{n}" for n in range(5)]
    why = "the shard does not follow the topology in etcd"
    shared = not_moved_summary("a", keys, why, object())
    alone = not_moved_summary("a", keys, why, InMemorySessionStore())
    assert (shared.held, shared.not_moved, shared.left_behind) == (5, 5, 5)
    assert alone.reasons == {why: 5}
    first, second = (r.getMessage() for r in caplog.records)
    assert f"5 because {why}" in first and "no data is lost" in first
    assert "in-memory session store" in second and "no data is lost" not in second


def test_a_drain_whose_moves_failed_never_promises_an_in_memory_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once only a drain that moved nothing knew its store: one whose moves failed said
    "no data is lost" of sessions that ended with the process."""
    caplog.set_level(logging.INFO, "shardroute.server")
    failed = {"k1": MigrationFailed("moving 'k1' failed", "k1")}
    for store in (InMemorySessionStore(), None):
        summary = move_all("a", ["k0", "k1"], lambda todo: (["k0"], failed), lambda: 1, store)
        assert (summary.moved, summary.failed) == (1, 1)
    alone, shared = (r.getMessage() for r in caplog.records)
    assert "in-memory session store" in alone and "no data is lost" not in alone
    assert "no data is lost" in shared


def test_a_stop_that_ends_sessions_in_memory_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "shardroute.server")
    log_stop("a", 3, None, InMemorySessionStore())  # 3 sessions end with the process
    log_stop("a", 3, DrainSummary(3, 0, 1, held=3), InMemorySessionStore())  # all moved
    log_stop("a", 3, None, None)  # whole in a shared store
    log_stop("a", 0, None, InMemorySessionStore())
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.INFO, logging.INFO, logging.INFO]
    assert "stopped" in caplog.records[0].msg  # the line itself, not a format


def test_an_ejection_says_its_cause_in_words(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "shardroute.client")
    ejected(Telemetry(), "s2", "not_sent")
    ejected(Telemetry(), "s3", "some_new_cause")
    first, second = (r.getMessage() for r in caplog.records)
    assert "shard s2 ejected by this client (not_sent: calls could not reach it)" in first
    assert "(some_new_cause)" in second and "no data is at risk" in second


@pytest.mark.parametrize("in_process", [False, True])
def test_the_drain_commands_line_says_where_sessions_left_behind_are(in_process: bool) -> None:
    """``shardroute drain``'s line promised "no data is lost ... whole in the session
    store" for every shard; a shard on an in-memory store now says its sessions left
    behind end with it (``DrainResponse.store_in_process``, filled by the shard)."""
    reply = shard_pb2.DrainResponse(
        sessions_moved=4,
        sessions_held=6,
        sessions_not_moved=1,
        sessions_failed=1,
        moves_counted=True,
        store_in_process=in_process,
    )
    line = drain_counts("a", reply)
    assert "4 of 6 sessions moved" in line and "1 not moved, 1 failed" in line
    assert ("no data is lost" in line) is not in_process
    assert ("the 2 sessions left behind end with the shard" in line) is in_process
    one = shard_pb2.DrainResponse(
        sessions_moved=5,
        sessions_held=6,
        sessions_failed=1,
        moves_counted=True,
        store_in_process=True,
    )
    assert "the session left behind ends with the shard" in drain_counts("a", one)
    everything = shard_pb2.DrainResponse(
        sessions_moved=6, sessions_held=6, moves_counted=True, store_in_process=in_process
    )
    assert drain_counts("a", everything).endswith("0 not moved, 0 failed")
