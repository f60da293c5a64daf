"""The attempt loop of one call, written once for the sync and the asyncio client.

:class:`Attempts` is sans-I/O: it hands out the shards to try (the routing decision's
candidates, minus what the budget and the deadline allow), and after each failure it
records the failure for outlier ejection and either lets the loop go on or raises the
translated error. The clients only make the gRPC call itself.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc

from shardroute import metadata, session_keys
from shardroute.errors import CallFailed, DeadlineExceeded, OutcomeUnknown, ShardUnavailable
from shardroute.model import Shard
from shardroute.routing import Decision, Reason, Router
from shardroute.transport.failures import (
    Failure,
    classify,
    peer_went_silent,
    redirect_target,
    translate,
)
from shardroute.transport.outlier import OutlierDetector
from shardroute.transport.retry import RetryPolicy
from shardroute.transport.stats import CallStats

__all__ = ["Attempts", "CallRules", "first_metadata"]

Metadata = tuple[tuple[str, str], ...]

REFUSED_BACKOFF_S = (0.02, 1.0)
"""A call a shard refused before running it is sent again after a pause drawn from
[d/2, d], d doubling from the first value up to the second, while the deadline allows."""


_REASON_VALUES = {reason: reason.value for reason in Reason}  # no enum property per call


def first_metadata(
    session_key: str,
    decision: Decision,
    priority: str,
    extra: Metadata = (),
    wire: str | None = None,
) -> Metadata:
    """Request metadata of a call's first attempt: the session key; when the shard is
    not the session's affinity choice, also the reason and the shard id meant; the
    priority unless it is ``standard``; then the caller's own entries. (Each entry costs
    both sides a few microseconds per call, so the common case sends one.) The key goes
    in its wire form (:func:`~shardroute.session_keys.wire_form`; ``wire``: the caller
    has it already)."""
    if wire is None:
        wire = session_keys.wire_form(session_key)
    reason = decision.reason
    if reason is Reason.AFFINITY:
        md: Metadata = ((metadata.SESSION_KEY, wire),)
    else:
        md = (
            (metadata.SESSION_KEY, wire),
            (metadata.REASON, _REASON_VALUES[reason]),
            (metadata.SHARD_ID, decision.shard.id),
        )
    if priority != "standard":
        md += ((metadata.PRIORITY, priority),)
    return md + extra if extra else md


@dataclass(frozen=True, slots=True)
class CallRules:
    """What every call of one client shares: the failover rules and the bookkeeping."""

    retry: RetryPolicy
    outlier: OutlierDetector
    router: Router
    stats: CallStats | None = None
    clock: Callable[[], float] = time.monotonic
    shards: Callable[[], Mapping[str, Shard]] | None = None
    """The current shards, to resolve a redirect's target (None: redirects fail)."""
    on_ejection: Callable[[str, str], None] | None = None
    """Called with (shard id, failure class) when a failure ejects a shard."""


class Attempts:
    """The attempts of one call: iterate for the shard to try next.

    Protocol: start with ``shard = first()``; for each shard, make the call with
    ``timeout()`` and ``metadata_for(shard)``; on success call :meth:`succeeded`; on a
    gRPC error ``shard = failed(shard, error)``, which returns the next shard to try,
    None when there is none (then raise :meth:`exhausted`), or raises when the error
    must reach the caller; wait :attr:`pause` seconds first when it is set (a refused
    call sent again to the same shard). (A plain loop, not a generator: this runs on
    every call.)

    Built only when an attempt fails: the first attempt of a call allocates none.
    """

    __slots__ = (
        "_again",
        "_deadline",
        "_decision",
        "_detour",
        "_extra",
        "_failures",
        "_flags",
        "_method",
        "_refusals",
        "_rules",
        "_session_key",
        "_turn",
        "attempt",
        "pause",
        "received",
    )

    def __init__(
        self,
        decision: Decision,
        session_key: str,
        method: str,
        priority: str,
        timeout: float,
        idempotent: bool,
        rules: CallRules,
        extra_metadata: Metadata = (),
        started: float | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._decision = decision
        self._session_key = session_key
        self._method = method
        self._deadline = (rules.clock() if started is None else started) + timeout
        self._rules = rules
        # Priority and idempotency are rarely not the default: keep them in one slot.
        self._flags = (priority, idempotent)
        # The turn id goes last on every attempt (the same one: docs/client.md).
        turn: Metadata = ((metadata.TURN_ID, turn_id),) if turn_id else ()
        self._extra = (*extra_metadata, *turn)
        self._turn = turn_id is not None
        self._failures: list[tuple[str, str]] | None = None
        self._detour: Shard | str | None = None  # redirect: pending shard, then its id
        self.attempt = 0
        self.received = False
        """Set by the stream shell once a message arrived: no failover after that."""
        self.pause = 0.0
        """Seconds to wait before the next attempt (a refused call's backoff), else 0."""
        self._again: Shard | None = None  # a refused attempt's shard, to send it again
        self._refusals = 0

    def first(self) -> Shard:
        """The shard of the first attempt (the routing decision's choice)."""
        self.attempt = 1
        return self._decision.shard

    def _next(self) -> Shard | None:
        """The shard of the next attempt: a redirect's target (followed once, outside
        the budget), else the next fallback while the budget allows; None when done. A
        refused call goes to the same shard again, outside the budget, with the same
        metadata (``attempt`` does not move)."""
        again = self._again
        if again is not None:
            self._again = None
            return again
        detour = self._detour
        if isinstance(detour, Shard):
            self._detour = detour.id
            self.attempt += 1
            return detour
        if self.attempt >= self._rules.retry.max_attempts:
            return None
        used = self.attempt - 1 - (detour is not None)  # fallbacks tried so far
        fallbacks = self._decision.fallbacks
        if used >= len(fallbacks):
            return None
        self.attempt += 1
        return fallbacks[used]

    @property
    def tried(self) -> tuple[str, ...]:
        """Ids of the shards whose attempt failed so far, in order."""
        return tuple(shard_id for shard_id, _ in self._failures or ())

    def timeout(self) -> float:
        """Seconds left for this attempt; raises DeadlineExceeded when none are."""
        remaining = self._deadline - self._rules.clock()
        if remaining <= 0:
            if self._rules.stats is not None:
                self._rules.stats.failed()
            tried = self.tried
            raise DeadlineExceeded(
                f"deadline exceeded calling {self._method} for session {self._session_key!r} "
                f"after {self.attempt} attempt(s) ({', '.join(tried) or 'none failed'})",
                tried[-1] if tried else None,
            )
        return remaining

    def metadata_for(self, shard: Shard) -> Metadata:
        """Request metadata of the attempt on ``shard``: as :func:`first_metadata`, with
        the reason ``failover`` or ``redirect`` after the first attempt."""
        priority = self._flags[0]
        if self.attempt == 1:
            return first_metadata(self._session_key, self._decision, priority, self._extra)
        reason = "redirect" if self._detour == shard.id else "failover"
        md: Metadata = (
            (metadata.SESSION_KEY, session_keys.wire_form(self._session_key)),
            (metadata.REASON, reason),
            (metadata.SHARD_ID, shard.id),
        )
        if priority != "standard":
            md += ((metadata.PRIORITY, priority),)
        return md + self._extra if self._extra else md

    @property
    def last_failure(self) -> str:
        """The class of the last failed attempt (a :class:`Failure` value, or
        ``redirected``)."""
        what = self._failures[-1][1] if self._failures else "unknown"
        return "redirected" if what.startswith("redirected") else what

    @property
    def failed_over(self) -> bool:
        """True when the call is being made on a fallback, not the first choice."""
        return self.attempt > 1

    def succeeded(self, shard: Shard) -> None:
        """The attempt on ``shard`` succeeded: the call went somewhere, so the affinity
        memo learns it (``Router.settle``). After a failover or a redirect the session
        is pinned to ``shard`` (its context is there now)."""
        rules = self._rules
        rules.outlier.success(shard.id)
        if self.attempt == 1:
            if rules.stats is not None:
                rules.stats.succeeded(self._decision.reason.value, False)
            rules.router.settle(self._session_key, self._decision)
            return
        rules.router.remember(self._session_key, shard.id)
        if rules.stats is not None:
            redirected = self._detour == shard.id
            rules.stats.succeeded("redirect" if redirected else "failover", not redirected)

    def failed(self, shard: Shard, error: grpc.RpcError) -> Shard | None:
        """The attempt on ``shard`` failed with ``error``: raise it (translated), or
        return the shard to try next (None: no more)."""
        self.pause = 0.0
        try:
            self._failed(shard, error)
            return self._next()
        except BaseException:
            if self._rules.stats is not None:
                self._rules.stats.failed()
            raise

    def _failed(self, shard: Shard, error: grpc.RpcError) -> None:
        if self._failures is None:
            self._failures = []
        owner = redirect_target(error)
        if owner is not None:
            self._failures.append((shard.id, f"redirected to {owner}"))
            self._follow(shard, owner, error)
            return
        failure = classify(error)
        rules = self._rules
        ejected = False
        if failure in (Failure.NOT_SENT, Failure.MAYBE_EXECUTED):
            at_once = failure is Failure.NOT_SENT or peer_went_silent(error)
            ejected = rules.outlier.failure(shard.id, unreachable=at_once)
        elif failure is Failure.DEADLINE:
            ejected = rules.outlier.timeout(shard.id)
        if ejected and rules.on_ejection is not None:
            rules.on_ejection(shard.id, failure.value)
        self._failures.append((shard.id, failure.value))
        if failure is Failure.REFUSED and self._refuse_again(shard):
            return
        idempotent = self._flags[1]
        retry = self._rules.retry
        if retry.should_retry(
            failure,
            attempt=self.attempt,
            idempotent=idempotent,
            received=self.received,
            turn=self._turn,
        ):
            return
        if failure is Failure.NOT_SENT:
            raise self._unavailable() from error
        safe = idempotent or (self._turn and retry.exactly_once)
        if failure is Failure.MAYBE_EXECUTED and (safe or self.received):
            why = "the stream had started" if self.received else "the attempt budget is spent"
            details = error.details() if isinstance(error, grpc.Call) else ""
            raise OutcomeUnknown(
                f"connection lost during {self._method} on shard {shard.id!r}"
                f"{f' ({details})' if details else ''}; it may have executed and was not "
                f"retried because {why}",
                shard.id,
            ) from error
        raise translate(failure, error, shard.id, self._method) from error

    def _refuse_again(self, shard: Shard) -> bool:
        """The shard refused before running the call: send it there again after a pause
        (True), unless the pause would end past the deadline (False: the refusal goes
        to the caller)."""
        low, high = REFUSED_BACKOFF_S
        ceiling = min(high, low * 2**self._refusals)
        pause = random.uniform(ceiling / 2, ceiling)
        if self._rules.clock() + pause >= self._deadline:
            return False
        self._refusals += 1
        self.pause = pause
        self._again = shard
        return True

    def _follow(self, shard: Shard, owner: str, error: grpc.RpcError) -> None:
        """A redirect (the call did not execute): send it to ``owner`` once, and pin the
        session there so later calls go straight to it."""
        rules = self._rules
        where = f"{self._method} for session {self._session_key!r}"
        if self._detour is not None or owner == shard.id:
            raise CallFailed(
                f"{where}: shard {shard.id!r} redirected to {owner!r} after a redirect "
                "already; the session's ownership is changing, retry shortly",
                code=grpc.StatusCode.FAILED_PRECONDITION,
                details=f"redirect to {owner}",
                shard_id=shard.id,
            ) from error
        target = rules.shards().get(owner) if rules.shards is not None else None
        if target is None:
            raise CallFailed(
                f"{where}: shard {shard.id!r} redirected to {owner!r}, which is not in "
                "this client's topology (yet); retry shortly",
                code=grpc.StatusCode.FAILED_PRECONDITION,
                details=f"redirect to {owner}",
                shard_id=shard.id,
            ) from error
        rules.router.remember(self._session_key, owner)
        if rules.stats is not None:
            rules.stats.redirected()
        self._detour = target

    def exhausted(self) -> ShardUnavailable:
        """The error for a call whose every allowed attempt failed before reaching a shard."""
        if self._rules.stats is not None:
            self._rules.stats.failed()
        return self._unavailable()

    def _unavailable(self) -> ShardUnavailable:
        return ShardUnavailable(
            f"no shard could take {self._method} for session {self._session_key!r}: "
            f"{'; '.join(f'{i}: {w}' for i, w in self._failures or ()) or 'no candidates'} "
            f"({self.attempt} of at most {self._rules.retry.max_attempts} attempts)",
            self.tried,
        )
