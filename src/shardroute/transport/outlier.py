"""Passive outlier ejection: stop sending to a shard that keeps failing, for a while.

Like Envoy's outlier detection: a shard is ejected after ``consecutive_failures``
failed calls in a row (a connection that cannot even be made, or that stopped answering
HTTP/2 pings, ejects at once), or after ``consecutive_timeouts`` calls in a row that ran
out of their deadline there (slow counts as failing: a wedged shard that accepts calls
and never answers is ejected too), or, when ``slow_call_s`` is set, after
``consecutive_slow`` successful calls in a row that took longer than that (a shard that
answers, but late: swapping, throttled, a noisy neighbour), for ``base_ejection_s``
doubling on each repeat up to ``max_ejection_s``. A success in time resets the three
counts. Ejection is per client: other clients decide for themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shardroute._validate import seconds
from shardroute.errors import ConfigError

__all__ = ["OutlierDetector"]


@dataclass
class _Health:
    failures: int = 0
    timeouts: int = 0
    slow: int = 0
    ejections: int = 0
    until: float = 0.0


class OutlierDetector:
    """Tracks consecutive failures per shard and which shards are ejected now.

    Thread-safe. :meth:`ejected` is cheap: it returns a cached frozenset, rebuilt
    only when an ejection starts or expires.

    Args:
        consecutive_failures: failed calls in a row that eject a shard (a connection
            that cannot be made, or whose peer stopped answering pings, ejects at once).
        base_ejection_s: the first ejection's length; doubled on each repeat.
        max_ejection_s: the longest ejection.
        consecutive_timeouts: calls in a row that ran out of their deadline on the shard
            and eject it.
        slow_call_s: a successful unary call that took longer than this (seconds, from
            the call's start) is a slow answer; None (the default): answers are never
            slow, only deadlines count. Set it above your service's normal p99.
        consecutive_slow: slow answers in a row that eject a shard (tuned apart from
            ``consecutive_timeouts``: a slow answer still delivered its result).
        clock: monotonic seconds (inject in tests).
    """

    def __init__(
        self,
        consecutive_failures: int = 3,
        base_ejection_s: float = 2.0,
        max_ejection_s: float = 30.0,
        *,
        consecutive_timeouts: int = 3,
        slow_call_s: float | None = None,
        consecutive_slow: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if consecutive_failures < 1:
            raise ConfigError("consecutive_failures must be >= 1")
        if consecutive_timeouts < 1:
            raise ConfigError("consecutive_timeouts must be >= 1")
        if isinstance(consecutive_slow, bool) or not isinstance(consecutive_slow, int):
            raise ConfigError(f"consecutive_slow must be an integer >= 1, got {consecutive_slow!r}")
        if consecutive_slow < 1:
            raise ConfigError(f"consecutive_slow must be an integer >= 1, got {consecutive_slow!r}")
        if slow_call_s is not None:
            seconds("slow_call_s", slow_call_s)
        if (
            not 0
            < seconds("base_ejection_s", base_ejection_s)
            <= seconds("max_ejection_s", max_ejection_s)
        ):
            raise ConfigError("ejection times must satisfy 0 < base_ejection_s <= max_ejection_s")
        self.consecutive_failures = consecutive_failures
        self.consecutive_timeouts = consecutive_timeouts
        self.slow_call_s = slow_call_s
        self.consecutive_slow = consecutive_slow
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self._clock = clock
        self._lock = threading.Lock()
        self._health: dict[str, _Health] = {}
        self.health: Mapping[str, object] = self._health
        """Shards with a failure record, by id (read-only, live): while it is empty,
        :meth:`success` has nothing to reset, so the clients skip it."""
        self._ejected: frozenset[str] = frozenset()
        self._next_expiry = float("inf")

    def ejected(self) -> frozenset[str]:
        """Shard ids ejected right now (no clock read while none is)."""
        if self._ejected and self._clock() >= self._next_expiry:
            with self._lock:
                self._rebuild()
        return self._ejected

    def success(self, shard_id: str) -> None:
        """A call to ``shard_id`` succeeded in time: reset its failure, timeout and
        slow-answer counts."""
        health = self._health.get(shard_id)
        if health is not None and (health.failures or health.timeouts or health.slow):
            with self._lock:
                health.failures = health.timeouts = health.slow = 0

    def failure(self, shard_id: str, *, unreachable: bool = False) -> bool:
        """A call to ``shard_id`` failed; ``unreachable`` when no connection could be made.

        Returns True when this failure ejected the shard.
        """
        with self._lock:
            health = self._health.setdefault(shard_id, _Health())
            health.failures += 1
            at_once = unreachable or health.failures >= self.consecutive_failures
            return self._eject_locked(health) if at_once else False

    def timeout(self, shard_id: str) -> bool:
        """A call to ``shard_id`` ran out of its deadline there. Returns True when this
        timeout ejected the shard."""
        return self._count(shard_id, "timeouts", self.consecutive_timeouts)

    def slow(self, shard_id: str) -> bool:
        """A call to ``shard_id`` succeeded, but took longer than :attr:`slow_call_s`.
        Returns True when this slow answer ejected the shard."""
        return self._count(shard_id, "slow", self.consecutive_slow)

    def _count(self, shard_id: str, kind: str, limit: int) -> bool:
        """One more ``kind`` (a :class:`_Health` counter) for ``shard_id``: ejects it when
        ``limit`` are in a row. Returns True when this one ejected it."""
        with self._lock:
            health = self._health.setdefault(shard_id, _Health())
            count = getattr(health, kind) + 1
            setattr(health, kind, count)
            return self._eject_locked(health) if count >= limit else False

    def _eject_locked(self, health: _Health) -> bool:
        now = self._clock()
        if health.until > now:
            return False  # already ejected
        duration = min(self.max_ejection_s, self.base_ejection_s * 2**health.ejections)
        health.ejections += 1
        health.failures = health.timeouts = health.slow = 0
        health.until = now + duration
        self._rebuild()
        return True

    def forget(self, shard_id: str) -> None:
        """Drop what is known about a shard (it left the topology)."""
        with self._lock:
            if self._health.pop(shard_id, None) is not None:
                self._rebuild()

    def _rebuild(self) -> None:
        now = self._clock()
        ejected = set()
        next_expiry = float("inf")
        for shard_id, health in self._health.items():
            if health.until > now:
                ejected.add(shard_id)
                next_expiry = min(next_expiry, health.until)
            elif health.ejections and now - health.until > self.max_ejection_s:
                health.ejections = 0  # healthy for a while: forgive past ejections
        self._ejected = frozenset(ejected)
        self._next_expiry = next_expiry
