"""Failover rules, as a small policy object that only decides (the transport acts).

A failed attempt is retried on the next candidate of the routing decision when:

- the request never reached the shard (``Failure.NOT_SENT``), or
- it may have executed (``Failure.MAYBE_EXECUTED``) and the caller marked the call
  idempotent, and, for a stream, no message was received yet;

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
    """

    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def should_retry(
        self, failure: Failure, *, attempt: int, idempotent: bool, received: bool = False
    ) -> bool:
        """Whether attempt number ``attempt`` (1-based) that failed so may move on."""
        if attempt >= self.max_attempts or received:
            return False
        if failure is Failure.NOT_SENT:
            return True
        return failure is Failure.MAYBE_EXECUTED and idempotent
