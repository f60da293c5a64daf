"""Failover rules, as a small policy object that only decides (the transport acts).

A failed attempt is retried on the next candidate of the routing decision when:

- the request never reached the shard (``Failure.NOT_SENT``), or
- it may have executed (``Failure.MAYBE_EXECUTED``) and the caller marked the call
  idempotent, or ``exactly_once`` is on and the call carries a turn id (the shard that
  applied it answers the retry from its record: docs/client.md, "Exactly-once turns"),
  and, for a stream, no message was received yet;

and the attempt budget (``max_attempts``) and the deadline allow another attempt.
Everything else goes to the caller as an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardroute.errors import ConfigError
from shardroute.transport.failures import Failure

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many shards one call may try, and which failures move on to the next.

    Attributes:
        max_attempts: attempts per call, the first one included (>= 1).
        exactly_once: send a turn id with every call and retry a call whose outcome is
            unknown under it, idempotent or not. Turn on only for services whose
            non-idempotent methods run through ``SessionHost.turn`` and ``checkpoint``
            (which record turn ids): a method that does not would run twice.
    """

    max_attempts: int = 3
    exactly_once: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def should_retry(
        self,
        failure: Failure,
        *,
        attempt: int,
        idempotent: bool,
        received: bool = False,
        turn: bool = False,
    ) -> bool:
        """Whether attempt number ``attempt`` (1-based) that failed so may move on
        (``turn``: the call carries a turn id)."""
        if attempt >= self.max_attempts or received:
            return False
        if failure is Failure.NOT_SENT:
            return True
        return failure is Failure.MAYBE_EXECUTED and (idempotent or (turn and self.exactly_once))
