"""A shard's load: accounting by the interceptors (in-flight, queue depth, a latency
window) and the rule that decides when a load report is worth an etcd write. Pure: no
I/O, no threads; tests drive it with a fake clock."""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shardroute.model import LOAD_REPORT_HEARTBEAT_S, LoadReport
from shardroute.server.config import CONTROL_SERVICE, HEALTH_SERVICE

__all__ = ["LoadAccounting", "LoadReportPolicy", "is_accounted"]

_UNACCOUNTED_PREFIXES = (f"/{CONTROL_SERVICE}/", f"/{HEALTH_SERVICE}/")


def is_accounted(method: str) -> bool:
    """Whether calls to ``method`` (``/package.Service/Method``) count as load.

    The health and control services do not: a health Watch stream would otherwise
    count as in flight for the shard's whole life.
    """
    return not method.startswith(_UNACCOUNTED_PREFIXES)


class LoadAccounting:
    """In-flight calls, queue depth and a latency window, updated by the interceptors.

    Thread contract: every method may be called from any thread (and from the event
    loop); each update takes one short lock and does no I/O.

    - ``inflight``: user calls that started running and have not finished (a stream
      counts until its last message is sent or it is cancelled).
    - ``queue_depth``: calls accepted by gRPC and waiting for a worker thread (sync
      server; the asyncio server has no worker queue and reports 0).
    - latency: the last ``window`` call durations within ``window_s`` seconds; p50/p95
      by nearest rank.
    """

    def __init__(
        self,
        *,
        window: int = 1024,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Condition()
        self._inflight = 0
        self._queued = 0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=window)
        self._window_s = window_s
        self._clock = clock
        self.calls_total = 0

    @property
    def inflight(self) -> int:
        """User calls running now."""
        return self._inflight

    @property
    def queue_depth(self) -> int:
        """Calls waiting for a worker."""
        return self._queued

    def load_now(self) -> int:
        """Calls running or waiting for a worker now: the shard's exact load."""
        return self._inflight + self._queued

    def enqueued(self) -> None:
        """A call was handed to the worker pool."""
        with self._lock:
            self._queued += 1

    def dequeued(self) -> None:
        """A worker picked a call up."""
        with self._lock:
            self._queued = max(0, self._queued - 1)
            self._lock.notify_all()

    def call_started(self) -> float:
        """A user call started; returns its start time for :meth:`call_finished`."""
        with self._lock:
            self._inflight += 1
            self.calls_total += 1
        return self._clock()

    def call_finished(self, started: float) -> None:
        """A user call finished (any outcome)."""
        now = self._clock()
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            self._latencies.append((now, (now - started) * 1000.0))
            self._lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no user call is in flight or waiting for a worker; False when
        ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self._inflight == 0 and self._queued == 0, max(0.0, timeout)
            )

    def latency_ms(self) -> tuple[float, float]:
        """(p50, p95) over the window, in milliseconds; (0, 0) with no samples."""
        horizon = self._clock() - self._window_s
        with self._lock:
            samples = sorted(ms for ts, ms in self._latencies if ts >= horizon)
        if not samples:
            return 0.0, 0.0
        return _rank(samples, 0.50), _rank(samples, 0.95)

    def report(self, sessions: int, now: float | None = None) -> LoadReport:
        """A :class:`LoadReport` of the current load (``ts`` in unix seconds)."""
        p50, p95 = self.latency_ms()
        return LoadReport(
            inflight=self._inflight,
            queue_depth=self._queued,
            sessions=max(0, sessions),
            latency_ms_p50=round(p50, 3),
            latency_ms_p95=round(p95, 3),
            ts=time.time() if now is None else now,
            calls_total=self.calls_total,
        )


def _rank(sorted_samples: Sequence[float], q: float) -> float:
    index = max(0, math.ceil(q * len(sorted_samples)) - 1)
    return sorted_samples[index]


@dataclass(slots=True)
class LoadReportPolicy:
    """Decides when a load report is worth an etcd write (the etcd write budget).

    A report is written when **both**:

    1. at least ``min_interval_s`` (1 s) passed since the last write, stretched by a
       random jitter of up to ``jitter`` (20 %) so shards do not write in lockstep; and
    2. it changed *notably* since the last written one:

       - ``inflight`` or ``queue_depth`` moved by ≥ max(1, ``inflight_step`` * capacity)
         (25 % of capacity: 16 calls for a capacity of 64; a busy shard's in-flight
         count moves by ~√inflight from one second to the next on its own, and a 10 %
         step wrote that noise: ~3,800 writes/s from 10,000 shards at half load,
         ``benchmarks/scale_sim.py``, against ~1,200 with 25 %);
       - ``sessions`` moved by ≥ max(1, ``sessions_step`` * the last count) (10 %);
       - p95 latency moved by ≥ ``latency_step`` (50 %) and at least 5 ms;
       - or ``heartbeat_s`` (10 s) passed, so a report's ``ts`` is never much older
         than that while the shard lives.

    So a steady shard writes once per 10 s and a busy one at most about once a second.
    """

    capacity: int
    min_interval_s: float = 1.0
    jitter: float = 0.2
    inflight_step: float = 0.25
    sessions_step: float = 0.10
    latency_step: float = 0.50
    heartbeat_s: float = LOAD_REPORT_HEARTBEAT_S
    rng: random.Random = field(default_factory=random.Random)
    _next_allowed: float = 0.0
    _heartbeat_due: float = 0.0
    _last: LoadReport | None = None

    def notable(self, report: LoadReport) -> bool:
        """Whether ``report`` differs notably from the last written one."""
        last = self._last
        if last is None:
            return True
        step = max(1, math.ceil(self.inflight_step * self.capacity))
        if abs(report.inflight - last.inflight) >= step:
            return True
        if abs(report.queue_depth - last.queue_depth) >= step:
            return True
        if abs(report.sessions - last.sessions) >= max(
            1, math.ceil(self.sessions_step * last.sessions)
        ):
            return True
        delta = abs(report.latency_ms_p95 - last.latency_ms_p95)
        return delta >= 5.0 and delta >= self.latency_step * last.latency_ms_p95

    def should_write(self, report: LoadReport, now: float) -> bool:
        """Whether to write ``report`` at monotonic time ``now``."""
        if now < self._next_allowed:
            return False
        return now >= self._heartbeat_due or self.notable(report)

    def written(self, report: LoadReport, now: float) -> None:
        """Record that ``report`` was written at monotonic time ``now``."""
        self._last = report
        self._next_allowed = now + self.min_interval_s * (1.0 + self.jitter * self.rng.random())
        self._heartbeat_due = now + self.heartbeat_s * (1.0 - self.jitter * self.rng.random() / 2)

    def next_check(self, now: float) -> float:
        """Seconds until a write could next be allowed (for the reporter's wait)."""
        return max(0.0, self._next_allowed - now)
