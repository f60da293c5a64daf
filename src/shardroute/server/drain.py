"""A drain's session moves and the operator's summary lines (both shells).

A drain moves every held session with a :class:`~shardroute.sessions.Migrator`; what each
move did is counted in a :class:`DrainSummary` (``moved``, ``not_moved``: no move was
started, ``failed``: a move started and did not commit, so it was rolled back or lost a
race). The operator gets one line per drain and one per stop, with counts and the
reasons in plain words; each session's own outcome, with the exception, is at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardroute.errors import (
    ConfigError,
    EtcdUnavailable,
    LeaseNotFound,
    MigrationConflict,
    MigrationFailed,
    NoShardAvailable,
    ShardRouteError,
    UnknownShard,
)
from shardroute.telemetry.migration import status_name

__all__ = ["DrainSummary", "in_process", "log_stop", "move_reason", "stop_line"]

log = logging.getLogger("shardroute.server")

EXIT_LEFT_BEHIND = 3
"""``shardroute drain``'s exit code when sessions were left behind (not moved or failed)
or the shard did not report its moves in time. They are whole in a shared session store
(etcd, Redis); an in-memory store ends them with the shard (the printed line says so)."""

NO_TARGET = "no other active shard could take it"
"""The reason of a session left behind because no shard could take it."""


@dataclass(frozen=True, slots=True)
class DrainSummary:
    """What a drain's session moves did (``ShardServer.last_drain``)."""

    moved: int
    """Sessions moved to another shard (each move committed)."""
    failed: int
    """Moves that started and did not commit: rolled back, or another mover or shard
    changed the session's owner first. The session stays whole in the session store."""
    peak_concurrent_moves: int
    not_moved: int = 0
    """Sessions no move was started for (deadline passed, no other active shard, moves
    turned off); whole in the session store."""
    held: int = 0
    """Sessions the shard held when the drain began."""
    duration_s: float = 0.0
    """Time the moves took."""
    reasons: Mapping[str, int] = field(default_factory=dict)
    """How many sessions were left behind (not moved or failed), by plain reason."""

    @property
    def left_behind(self) -> int:
        """Sessions this drain did not move (``not_moved + failed``)."""
        return self.not_moved + self.failed


def move_reason(error: ShardRouteError) -> tuple[bool, str]:
    """Why a drain's move of one session did not happen, for an operator: (whether a
    move was started, the reason in plain words). Nothing here loses data: a session
    left behind is whole in the session store."""
    if isinstance(error, MigrationFailed) and not error.started:
        return False, "the drain's grace period ended before its move began"
    if isinstance(error, NoShardAvailable | UnknownShard):
        return False, NO_TARGET
    if isinstance(error, ConfigError):
        return False, "it has no saved state to move yet"
    if isinstance(error, MigrationConflict):
        return True, "another mover or shard changed its owner first"
    if isinstance(error, MigrationFailed) and isinstance(error.__cause__, LeaseNotFound):
        return True, "its target shard went away during the move (rolled back)"
    if isinstance(error, MigrationFailed):
        return True, f"the move failed ({_cause(error.__cause__)}) and was rolled back"
    if isinstance(error, EtcdUnavailable):
        return False, "etcd was unreachable"
    return True, f"the move failed ({type(error).__name__})"


def _cause(cause: BaseException | None) -> str:
    """What made a move fail, in a word or two: a shard's gRPC status code, etcd."""
    if isinstance(cause, EtcdUnavailable):
        return "etcd unreachable"
    code = status_name(cause)
    if code is not None:
        return f"a shard answered {code}"
    return type(cause).__name__ if cause is not None else "no cause given"


def _reasons(reasons: Mapping[str, int]) -> str:
    return "; ".join(f"{n} because {why}" for why, n in sorted(reasons.items(), key=_most))


def _most(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def not_moved_summary(
    shard_id: str, keys: Iterable[str], reason: str, store: object
) -> DrainSummary:
    """The summary of a drain that moved nothing, for ``reason`` (one line logged;
    ``store``: the shard's session store)."""
    held = len(list(keys))
    summary = DrainSummary(0, 0, 0, held, held, 0.0, {reason: held} if held else {})
    log_drain(shard_id, summary, in_process(store))
    return summary


def in_process(store: object) -> bool:
    """Whether ``store`` lives in this process (an in-memory store) and ends with it."""
    from shardroute.sessions import InMemorySessionStore

    return isinstance(store, InMemorySessionStore)


def move_all(
    shard_id: str,
    keys: list[str],
    migrate_many: Callable[[list[str]], tuple[list[Any], Mapping[str, ShardRouteError]]],
    peak: Callable[[], int],
    store: object = None,
) -> DrainSummary:
    """Run ``migrate_many`` on ``keys`` and count what it did; logs one summary line
    (and each session left behind at DEBUG; ``store``: the shard's session store, whose
    sessions left behind end with this process if it is an in-memory one)."""
    started = time.monotonic()
    results, errors = migrate_many(keys)
    failed, not_moved = 0, 0
    reasons: Counter[str] = Counter()
    for key, error in errors.items():
        tried, why = move_reason(error)
        failed += tried
        not_moved += not tried
        reasons[why] += 1
        log.debug("shard %s: session %r not moved, %s: %s", shard_id, key, why, error)
    summary = DrainSummary(
        len(results), failed, peak(), not_moved, len(keys), time.monotonic() - started, reasons
    )
    log_drain(shard_id, summary, in_process(store))
    return summary


def log_drain(shard_id: str, summary: DrainSummary, volatile: bool = False) -> None:
    """One line per drain: INFO when every session moved, else WARNING with the reasons
    (``volatile``: the session store ends with this process)."""
    counts = (
        f"shard {shard_id} drain: {summary.moved} of {summary.held} sessions moved in "
        f"{summary.duration_s:.1f}s, {summary.not_moved} not moved, {summary.failed} failed"
    )
    extra = {
        "shardroute_event": "drained",
        "shard": shard_id,
        "sessions_held": summary.held,
        "sessions_moved": summary.moved,
        "sessions_not_moved": summary.not_moved,
        "sessions_failed": summary.failed,
        "drain_moves_s": round(summary.duration_s, 3),
    }
    if not summary.left_behind:
        log.info("%s; nothing to do", counts, extra=extra)
        return
    todo = (
        "start a shard of this service if none is left"
        if NO_TARGET in summary.reasons
        else "nothing to do"
    )
    safety = (
        "the sessions left behind are in an in-memory session store, which ends with this "
        "process: configure a shared store (etcd, Redis) to keep sessions when a shard stops"
        if volatile
        else "no data is lost: each session left behind is whole in the session store and "
        f"another shard takes it over at its next turn; {todo}"
    )
    log.warning("%s (%s); %s", counts, _reasons(summary.reasons), safety, extra=extra)


def stop_line(shard_id: str, held: int, drain: DrainSummary | None, store: object) -> str:
    """The one line a shard logs once stopped: how many sessions it held, where they
    are (``store``: its session store), what its drain moved, and what to do."""
    volatile = in_process(store)
    if drain is not None and drain.held and not drain.left_behind:
        return f"shard {shard_id} stopped; its drain moved all {drain.held} sessions it held"
    if drain is not None:
        held = drain.held
    if not held:
        return f"shard {shard_id} stopped; it held no sessions; nothing to do"
    what = f"it held {held} sessions"
    if drain is not None:
        what = (
            f"of the {held} sessions it held, its drain moved {drain.moved} and left "
            f"{drain.left_behind} ({drain.not_moved} not moved, {drain.failed} failed)"
        )
    if volatile:
        return (
            f"shard {shard_id} stopped; {what} in an in-memory session store, which ends "
            "with this process: configure a shared store (etcd, Redis) to keep sessions "
            "when a shard stops"
        )
    return (
        f"shard {shard_id} stopped; {what}, each saved in the session store at its last "
        "answered turn: no data is lost, and another shard takes each over at its next "
        "turn; nothing to do"
    )


def log_stop(shard_id: str, held: int, drain: DrainSummary | None, store: object) -> None:
    """Log :func:`stop_line`: at WARNING when sessions ended with this process (an
    in-memory store, sessions not moved), else at INFO."""
    left = held if drain is None else drain.left_behind
    lost = bool(left) and in_process(store)
    log.log(logging.WARNING if lost else logging.INFO, stop_line(shard_id, held, drain, store))


DRAIN_REPORT_S = 120.0
"""How long ``shardroute drain`` waits for the moves' counts without ``--grace``."""


def drain_counts(shard_id: str, reply: Any) -> str:
    """The line ``shardroute drain`` prints once the shard answered."""
    if not reply.moves_counted:
        return (
            f"shard {shard_id} is draining; it did not report its session moves (an older "
            "shard, or not within the wait): see its log for the counts"
        )
    counts = (
        f"shard {shard_id} is draining: {reply.sessions_moved} of {reply.sessions_held} "
        f"sessions moved in {reply.moves_s:.1f}s, {reply.sessions_not_moved} not moved, "
        f"{reply.sessions_failed} failed"
    )
    left = reply.sessions_not_moved + reply.sessions_failed
    if left and reply.store_in_process:
        return (
            f"{counts}; {'the session' if left == 1 else f'the {left} sessions'} left "
            f"behind {'ends' if left == 1 else 'end'} with the shard: its session store is "
            "in memory (a shared store, etcd or Redis, keeps them; the shard's log says "
            "why they were left)"
        )
    if left:
        return (
            f"{counts}; no data is lost: the sessions left behind are whole in the session "
            "store and another shard takes each over at its next turn (the shard's log "
            "says why they were left)"
        )
    return counts
