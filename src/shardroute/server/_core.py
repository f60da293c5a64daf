"""The pure parts of a shard server, shared by the sync and asyncio shells.

Nothing here does I/O or starts threads: the lifecycle state machine, the server's
configuration, load accounting (in-flight, queue depth, latency window) and the rule that
decides when a load report is worth an etcd write. Both :class:`ShardServer` and
:class:`AsyncShardServer` drive these objects; tests drive them with a fake clock.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from shardroute.discovery.keys import KeySchema
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdOptions
from shardroute.model import EMPTY_MAPPING, LoadReport, Shard, ShardState

__all__ = [
    "CONTROL_SERVICE",
    "HEALTH_SERVICE",
    "Lifecycle",
    "LoadAccounting",
    "LoadReportPolicy",
    "ServerConfig",
    "ServerState",
]

CONTROL_SERVICE = "shardroute.v1.ShardControl"
HEALTH_SERVICE = "grpc.health.v1.Health"
_UNACCOUNTED_PREFIXES = (f"/{CONTROL_SERVICE}/", f"/{HEALTH_SERVICE}/")

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ServerState(enum.StrEnum):
    """Where a shard server is in its lifecycle.

    ``created → starting → serving → draining → stopping → stopped``; ``stop()`` may jump
    from any state to ``stopping``. Only ``serving`` and ``draining`` accept calls.
    """

    CREATED = "created"
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED: Mapping[ServerState, frozenset[ServerState]] = {
    ServerState.CREATED: frozenset({ServerState.STARTING, ServerState.STOPPING}),
    ServerState.STARTING: frozenset({ServerState.SERVING, ServerState.STOPPING}),
    ServerState.SERVING: frozenset({ServerState.DRAINING, ServerState.STOPPING}),
    ServerState.DRAINING: frozenset({ServerState.STOPPING}),
    ServerState.STOPPING: frozenset({ServerState.STOPPED}),
    ServerState.STOPPED: frozenset(),
}


class Lifecycle:
    """The server's state machine: one lock, no I/O.

    :meth:`advance` moves to a new state when the transition is allowed and returns
    whether it did, so the caller performs the matching I/O exactly once (a second
    ``stop()`` or ``drain()`` finds the transition already taken and does nothing).
    """

    def __init__(self) -> None:
        self._state = ServerState.CREATED
        self._cond = threading.Condition()

    @property
    def state(self) -> ServerState:
        """The current state (one attribute read)."""
        return self._state

    def advance(self, new: ServerState) -> bool:
        """Move to ``new`` if allowed from the current state; True when this call moved."""
        with self._cond:
            if new not in _ALLOWED[self._state]:
                return False
            self._state = new
            self._cond.notify_all()
            return True

    def wait_for(self, states: frozenset[ServerState], timeout: float | None = None) -> bool:
        """Block until the state is one of ``states``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states, timeout)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a shard server is configured with; validated, no I/O.

    See :class:`~shardroute.server.ShardServer` for the meaning of each field.
    """

    shard_id: str
    service: str
    etcd: tuple[str, ...] | None
    host: str = "127.0.0.1"
    port: int = 0
    advertise_address: str | None = None
    zone: str = ""
    region: str = ""
    weight: float = 1.0
    capacity: int = 64
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)
    lease_ttl_s: int = 5
    drain_grace_s: float = 10.0
    max_workers: int | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    etcd_timeout_s: float = 5.0
    etcd_ca_cert: str | None = None
    etcd_cert_key: str | None = None
    etcd_cert_cert: str | None = None
    etcd_user: str | None = None
    etcd_password: str | None = None
    wait_for_etcd: bool = False

    def __post_init__(self) -> None:
        schema = KeySchema(self.service)
        schema.shard(self.shard_id)  # validates the id
        if isinstance(self.etcd, str):
            object.__setattr__(self, "etcd", (self.etcd,))
        elif self.etcd is not None:
            object.__setattr__(self, "etcd", tuple(self.etcd))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port!r}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ConfigError(f"weight must be a finite number > 0, got {self.weight!r}")
        if self.capacity <= 0:
            raise ConfigError(f"capacity must be > 0, got {self.capacity!r}")
        if self.lease_ttl_s < 2:
            raise ConfigError(f"lease_ttl_s must be >= 2 (etcd's minimum), got {self.lease_ttl_s}")
        if self.drain_grace_s < 0:
            raise ConfigError(f"drain_grace_s must be >= 0, got {self.drain_grace_s!r}")
        if self.max_workers is not None and self.max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {self.max_workers!r}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.advertise_address is not None:
            host, sep, port = self.advertise_address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"advertise_address must be 'host:port', got {self.advertise_address!r}"
                )
        if self.etcd is not None:
            self.etcd_options()  # validates endpoints, TLS and auth together

    @property
    def schema(self) -> KeySchema:
        """The service's etcd key schema."""
        return KeySchema(self.service)

    @property
    def workers(self) -> int:
        """Worker threads of the sync server: ``max_workers`` or capacity + 8 (control,
        health and a little headroom), so ``capacity`` user calls run at once."""
        return self.max_workers if self.max_workers is not None else self.capacity + 8

    def etcd_options(self) -> EtcdOptions:
        """The :class:`EtcdOptions` to register with (``etcd`` must not be None)."""
        if self.etcd is None:
            raise ConfigError("this shard server has no etcd endpoints (standalone)")
        return EtcdOptions(
            endpoints=self.etcd,
            timeout=self.etcd_timeout_s,
            ca_cert=self.etcd_ca_cert,
            cert_key=self.etcd_cert_key,
            cert_cert=self.etcd_cert_cert,
            user=self.etcd_user,
            password=self.etcd_password,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel arguments of the gRPC server."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]

    def advertised(self, bound_port: int) -> str:
        """The address written in the shard record once the server is bound."""
        if self.advertise_address is not None:
            return self.advertise_address
        host = self.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{bound_port}"

    def shard(self, address: str, state: ShardState) -> Shard:
        """The shard record for ``shards/<id>``."""
        return Shard(
            id=self.shard_id,
            address=address,
            zone=self.zone,
            region=self.region,
            weight=self.weight,
            capacity=self.capacity,
            state=state,
            labels=self.labels,
        )


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
        window_s: float = 30.0,
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
         (10 % of capacity: 7 calls for a capacity of 64);
       - ``sessions`` moved by ≥ max(1, ``sessions_step`` * the last count) (10 %);
       - p95 latency moved by ≥ ``latency_step`` (50 %) and at least 5 ms;
       - or ``heartbeat_s`` (10 s) passed, so a report's ``ts`` is never much older
         than that while the shard lives.

    So a steady shard writes once per 10 s and a busy one at most about once a second.
    """

    capacity: int
    min_interval_s: float = 1.0
    jitter: float = 0.2
    inflight_step: float = 0.10
    sessions_step: float = 0.10
    latency_step: float = 0.50
    heartbeat_s: float = 10.0
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
