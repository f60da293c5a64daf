"""Active health checks: ask the shards a client uses whether they answer, between calls.

Passive ejection (:mod:`shardroute.transport.outlier`) learns that a shard is wedged from
the calls it spoils: ``consecutive_timeouts`` of them run out their deadline first. With
:class:`HealthChecks` a client also asks every shard it has a channel to, every
``interval_s``, on the standard gRPC health service (``grpc.health.v1.Health/Check``,
which every :class:`~shardroute.server.ShardServer` serves); a shard that leaves
``unhealthy_threshold`` checks in a row unanswered within ``timeout_s`` (a deadlock,
SIGSTOP, a full thread pool, a broken network path) is ejected as if no connection
could be made, before a user's call has to find out. A shard whose checks answer again
is taken back when its ejection ends, like any ejected shard.

What counts as unhealthy is *no answer*. An answer of any status is healthy for this
purpose: a draining shard answers ``NOT_SERVING``, and the router already avoids it for
new sessions from its etcd state while its sessions move (ejecting it here would send
its sessions' calls to shards that would take them over mid-move). A server without the
health service (``UNIMPLEMENTED``) is not checked again.

The checker runs in one daemon thread per client, with its own channels (one per
checked shard: the asyncio client's channels belong to its event loop), and sends every
round's checks at once (gRPC futures), so one wedged shard does not delay the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardroute._validate import seconds
from shardroute.errors import ConfigError
from shardroute.model import Shard
from shardroute.transport.channels import ChannelPool
from shardroute.transport.outlier import OutlierDetector

__all__ = ["HEALTH_CHECK_CAUSE", "HealthChecker", "HealthChecks"]

log = logging.getLogger("shardroute.health")

HEALTH_CHECK_CAUSE = "health_check"
"""The ejection cause (telemetry ``shardroute.cause``) of a shard ejected by its checks."""


@dataclass(frozen=True, slots=True)
class HealthChecks:
    """How a client checks the shards it uses (off by default: pass one to the client).

    Args:
        interval_s: time between two rounds of checks.
        timeout_s: how long a check may take before it counts as unanswered (at most
            ``interval_s``).
        unhealthy_threshold: unanswered checks in a row that eject a shard.
        service: the service name asked (``""``: the server as a whole, which is what
            :class:`~shardroute.server.ShardServer` sets).

    A wedged shard is ejected about ``interval_s * unhealthy_threshold + timeout_s``
    after it stops answering, whether or not calls are sent to it.
    """

    interval_s: float = 1.0
    timeout_s: float = 0.5
    unhealthy_threshold: int = 2
    service: str = ""

    def __post_init__(self) -> None:
        seconds("interval_s", self.interval_s)
        seconds("timeout_s", self.timeout_s)
        if self.timeout_s > self.interval_s:
            raise ConfigError(
                f"health checks: timeout_s ({self.timeout_s}) must not exceed interval_s "
                f"({self.interval_s}): a round would start before the last one ended"
            )
        threshold = self.unhealthy_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigError(
                f"health checks: unhealthy_threshold must be an integer >= 1, got {threshold!r}"
            )
        if not isinstance(self.service, str):
            raise ConfigError(f"health checks: service must be a string, got {self.service!r}")


class HealthChecker:
    """Runs :class:`HealthChecks` for one client until :meth:`close`.

    Args:
        policy: the checks.
        outlier: where an unhealthy shard is ejected.
        shards: the shards to check now (the client's: those it has a channel to).
        make_channel: a new synchronous channel to a shard (TLS as the client's).
        on_ejection: called with ``(shard_id, HEALTH_CHECK_CAUSE)`` when a check ejects.
    """

    def __init__(
        self,
        policy: HealthChecks,
        outlier: OutlierDetector,
        shards: Callable[[], Iterable[Shard]],
        make_channel: Callable[[Shard], grpc.Channel],
        on_ejection: Callable[[str, str], None] | None = None,
    ) -> None:
        self.policy = policy
        self._outlier = outlier
        self._shards = shards
        self._on_ejection = on_ejection
        self._channels = ChannelPool(make_channel, _close)  # the checker's own
        self._misses: dict[str, int] = {}
        self._unimplemented: set[str] = set()
        self.rounds = 0
        """Rounds of checks done (for tests and the curious)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="shardroute-health-checks", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop checking and close the checker's channels (waits for the round in
        progress, at most ``timeout_s``). Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._round()
                except Exception:  # never let one bad round end the checks
                    log.exception(
                        "unexpected error in a health check round (checks go on); please "
                        "report it with this traceback"
                    )
                self.rounds += 1
                self._stop.wait(self.policy.interval_s)
        finally:
            self._channels.close()

    def _round(self) -> None:
        shards = {s.id: s for s in self._shards() if s.id not in self._unimplemented}
        for shard_id in self._channels.retain(shards):  # left, or moved address
            if shard_id not in shards:
                self._misses.pop(shard_id, None)
        request = health_pb2.HealthCheckRequest(service=self.policy.service)
        pending: list[tuple[str, Any]] = []
        for shard in shards.values():
            stub = health_pb2_grpc.HealthStub(self._channels.channel(shard))
            pending.append((shard.id, stub.Check.future(request, timeout=self.policy.timeout_s)))
        for shard_id, future in pending:
            try:
                future.result()
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    log.warning(
                        "shard %s has no gRPC health service, so this client does not check "
                        "it (its failed calls still eject it); nothing to do unless you want "
                        "the checks: serve grpc.health.v1",
                        shard_id,
                    )
                    self._unimplemented.add(shard_id)  # its channel goes at the next round
                    continue
                self._missed(shard_id)
            else:
                self._answered(shard_id)

    def _answered(self, shard_id: str) -> None:
        # Only the checks' own count: an answered check does not forgive the failures
        # of real calls (a shard may answer its health service and fail every call).
        self._misses.pop(shard_id, None)

    def _missed(self, shard_id: str) -> None:
        misses = self._misses.get(shard_id, 0) + 1
        if misses < self.policy.unhealthy_threshold:
            self._misses[shard_id] = misses
            return
        self._misses[shard_id] = 0
        if self._outlier.failure(shard_id, unreachable=True):
            log.warning(
                "shard %s left %d health checks in a row unanswered (timeout %.2fs): ejected, "
                "its calls go to other shards until it answers again; no data is at risk; "
                "check the shard",
                shard_id,
                self.policy.unhealthy_threshold,
                self.policy.timeout_s,
            )
            if self._on_ejection is not None:
                self._on_ejection(shard_id, HEALTH_CHECK_CAUSE)


def _close(channel: grpc.Channel) -> None:
    channel.close()
