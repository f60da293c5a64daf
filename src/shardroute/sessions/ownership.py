"""Who serves a session: the pure ownership rules of docs/migration.md ("Ownership").

No I/O and no locks: the session host gathers the facts (the override as this shard
knows it, the live shards, whether it holds or froze the session, why the client sent
the call here) and :func:`decide` returns what to do. The host carries the action out.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from shardroute.model import Override
from shardroute.routing import Reason

__all__ = [
    "DELIBERATE_REASONS",
    "PLACED_REASONS",
    "UNBOUNDED_REASONS",
    "Action",
    "OwnershipDecision",
    "decide",
    "epoch_is_stale",
    "newest_override",
]

DELIBERATE_REASONS = frozenset({Reason.FAILOVER, Reason.SPILL, Reason.ZONE_FALLBACK})
"""``x-shardroute-reason`` values meaning the client placed the call here on purpose."""
PLACED_REASONS = DELIBERATE_REASONS | {"redirect"}
"""Reasons a new session taken over here was placed off its home on purpose: the client's
own choice, or a redirect it followed (a shard over its bound sent it here): its first
save writes an override naming this shard."""
UNBOUNDED_REASONS = frozenset({Reason.FAILOVER, "redirect"})
"""Reasons a shard never redirects a new session for its balance bound (``shard_bound``):
the call already failed over or followed a redirect, and a client follows one redirect
per call."""


class Action(enum.Enum):
    """What a shard does with a call of a session."""

    SERVE = "serve"
    """This shard holds the session and owns it: run the call."""
    TAKE_OVER = "take_over"
    """Load the session from the store (and swap the override to this shard), then run."""
    REDIRECT = "redirect"
    """Do not run: answer FAILED_PRECONDITION with ``x-shardroute-redirect: <owner>``."""
    HOLD = "hold"
    """A move of the session is in progress: wait for its commit or rollback."""


@dataclass(frozen=True, slots=True)
class OwnershipDecision:
    """The outcome of :func:`decide`; ``owner`` is set for :attr:`Action.REDIRECT`."""

    action: Action
    owner: str = ""


SERVE = OwnershipDecision(Action.SERVE)
TAKE_OVER = OwnershipDecision(Action.TAKE_OVER)
HOLD = OwnershipDecision(Action.HOLD)


def decide(
    *,
    shard_id: str,
    override: Override | None,
    live: Collection[str],
    held: bool,
    frozen: bool,
    reason: str | None,
) -> OwnershipDecision:
    """Apply the ownership rules, in order, to one call of a session.

    Args:
        shard_id: this shard.
        override: the session's override as this shard knows it (None: no override).
        live: ids of the shards in the topology (alive).
        held: this shard holds the session's state in memory.
        frozen: an export froze the session on this shard.
        reason: the call's ``x-shardroute-reason`` (None for affinity).

    1. An override names another owner that is alive: take over when the client placed
       the call here deliberately (failover, spill, zone fallback), else redirect to it.
    2. The override names this shard with ``moving_to`` set, or the session is frozen:
       hold.
    3. This shard holds the session: serve.
    4. Otherwise: take over.
    """
    if override is not None and override.owner != shard_id and override.owner in live:
        if reason in DELIBERATE_REASONS:
            return TAKE_OVER
        return OwnershipDecision(Action.REDIRECT, override.owner)
    if frozen or (override is not None and override.owner == shard_id and override.moving_to):
        return HOLD
    if held:
        return SERVE
    return TAKE_OVER


def newest_override(*candidates: Override | None) -> Override | None:
    """The candidate with the highest epoch (the first one on a tie), or None.

    A shard knows a session's override from two places: the topology watch, and what a
    mover told it directly (``ReleaseSession``), which can be ahead of the watch.
    """
    best: Override | None = None
    for candidate in candidates:
        if candidate is not None and (best is None or candidate.epoch > best.epoch):
            best = candidate
    return best


def epoch_is_stale(request_epoch: int, known: Override | None) -> bool:
    """Whether a migration call fenced at ``request_epoch`` is older than what this shard
    knows of the session (the override's epoch). Epoch 0 is never accepted when an
    override exists; a shard that knows no override accepts any epoch."""
    if known is None:
        return False
    return request_epoch < known.epoch
