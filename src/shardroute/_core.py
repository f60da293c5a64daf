"""What the sync and asyncio clients share: routing, topology following, the per-call path.

Both clients are thin shells (:mod:`shardroute._shell`) over this core and
:class:`~shardroute.transport.Attempts`: the routing decision, the failover rules and
outlier ejection are written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import grpc

from shardroute import metadata as md_keys
from shardroute._validate import seconds
from shardroute.discovery.source import TopologySource
from shardroute.errors import ConfigError, Overloaded
from shardroute.model import Shard, Topology
from shardroute.routing import Decision, Reason, Router
from shardroute.session_keys import known_wire_form, wire_form
from shardroute.telemetry import Telemetry
from shardroute.telemetry._setup import METRICS_STATE, TRACE_STATE
from shardroute.telemetry.client import LIVE_CLIENTS, CallRecord, client_instruments, failed_over
from shardroute.telemetry.client import ejected as report_ejection
from shardroute.transport import (
    Attempts,
    ChannelPool,
    InFlight,
    MethodSpec,
    OutlierDetector,
    RetryPolicy,
)
from shardroute.transport.attempts import CallRules, Metadata, first_metadata
from shardroute.transport.channels import channel_options as shard_channel_options
from shardroute.transport.health import HealthChecker, HealthChecks
from shardroute.transport.loadboard import LoadBoard
from shardroute.transport.recording import recorded_call
from shardroute.transport.stats import CallStats
from shardroute.transport.turns import turn_id_of, turn_ids

if TYPE_CHECKING:
    pass

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "PLAIN", "CallLoop", "CallOptions", "ClientCore"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
C = TypeVar("C")

SLOW = "slow"
"""The cause of an ejection by slow answers (``OutlierDetector.slow_call_s``)."""

CallOptions: TypeAlias = tuple[str, bool, Metadata, CallRecord | None]
"""What a call needs only when an attempt fails or is recorded: (priority, idempotent,
extra metadata, the telemetry record or None)."""
PLAIN: CallOptions = ("standard", False, (), None)
"""The options of a call with nothing but a session key."""

CallLoop: TypeAlias = Callable[
    [MethodSpec, Any, str, Decision, Metadata, float, float, CallOptions], Any
]
"""A shell's call loop: ``(spec, request, session_key, decision, first metadata,
timeout, started, options)`` → the response (or an iterator of them)."""


class ClientCore(Generic[C]):
    """Routing state of one client: source, router, ejection, retry rules, channels."""

    def __init__(
        self,
        source: TopologySource,
        *,
        zone: str | None,
        region: str | None,
        timeout: float,
        router: Router | None,
        retry: RetryPolicy | None,
        outlier: OutlierDetector | None,
        max_message_bytes: int,
        channel_options: Sequence[tuple[str, Any]],
        create_channel: Callable[[Shard, list[tuple[str, Any]]], C],
        close_channel: Callable[[C], None],
        telemetry: Telemetry | None = None,
        health_checks: HealthChecks | None = None,
        create_check_channel: Callable[[Shard, list[tuple[str, Any]]], grpc.Channel] | None = None,
    ) -> None:
        seconds("timeout", timeout)
        if health_checks is not None and not isinstance(health_checks, HealthChecks):
            raise ConfigError(
                f"health_checks must be a HealthChecks or None, got {type(health_checks).__name__}"
            )
        if max_message_bytes <= 0:
            raise ConfigError(f"max_message_bytes must be > 0, got {max_message_bytes!r}")
        self.source = source
        self.zone = zone
        self.region = region
        self.timeout = timeout
        self.router = router if router is not None else Router()
        self.retry = retry if retry is not None else RetryPolicy()
        self.outlier = outlier if outlier is not None else OutlierDetector()
        self.stats = CallStats()
        self._calls = self.stats.counter("calls")
        self._by_reason = {reason: self.stats.counter(reason.value) for reason in Reason}
        self.inflight = InFlight()  # this client's calls per shard: the router's load input
        # the loads routed on: etcd reports and response trailers, freshest, aged
        self.loads = LoadBoard(lambda: self.router.policy.max_report_age_s, self._on_view)
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self._health = self.outlier.health
        self._slow_s = self.outlier.slow_call_s  # None: answers never count as slow
        self._pins = self.router.memo.pins
        self._settle = self.router.affinity.settle
        self.turn_ids = turn_ids() if self.retry.exactly_once else None
        """(unary, stream) turn id makers, with ``RetryPolicy(exactly_once=True)``."""
        self.rules = CallRules(
            self.retry,
            self.outlier,
            self.router,
            self.stats,
            shards=lambda: source.current().shards,
            on_ejection=lambda shard_id, cause: report_ejection(self.telemetry, shard_id, cause),
        )
        options = shard_channel_options(max_message_bytes, channel_options)
        self.channels: ChannelPool[C] = ChannelPool(
            lambda shard: create_channel(shard, options), close_channel
        )
        self._on_topology(source.current())
        self._unsubscribe = source.subscribe(self._on_topology)
        self.health_checker: HealthChecker | None = None
        if health_checks is not None and create_check_channel is not None:
            self.health_checker = HealthChecker(
                health_checks,
                self.outlier,
                shards=self._checked_shards,
                make_channel=lambda shard: create_check_channel(shard, options),
                on_ejection=lambda shard_id, cause: report_ejection(
                    self.telemetry, shard_id, cause
                ),
            )
        LIVE_CLIENTS.add(self)  # its gauges (staleness, channels, ejected shards)
        if self.telemetry.active():  # the gauges exist before the first call
            client_instruments(self.telemetry)

    def _on_topology(self, topology: Topology) -> None:
        self.loads.adopt(topology)  # the view to route on: calls _on_view if it changed
        gone = self.channels.retain(topology.shards)
        self.loads.forget(gone)
        for shard_id in gone:
            self.outlier.forget(shard_id)

    def _on_view(self, view: Topology) -> None:
        """A new snapshot to route on (new topology, or loads that moved): build the
        ring and tables now, and rebase the in-flight counts on its reported loads."""
        self.router.prepare(view)  # build the ring here, off the request path
        self.inflight.rebase(self.router.basis(view))

    def current(self) -> Topology:
        """The snapshot the router routes on now: the source's, with the loads of
        :class:`~shardroute.transport.loadboard.LoadBoard` (no I/O)."""
        return self.loads.view(self.source.current(), self.loads.clock())

    def route(self, session_key: str, priority: str = "standard") -> Decision:
        """The routing decision for a request of ``session_key`` now (no I/O)."""
        return self.router.route(
            session_key,
            self.current(),
            priority=priority,
            zone=self.zone,
            region=self.region,
            excluded=self.outlier.ejected(),
            loads=self.inflight,
        )

    def bind(
        self, spec: MethodSpec, loops: tuple[CallLoop, CallLoop, CallLoop, CallLoop]
    ) -> Callable[..., Any]:
        """The routed callable of one method: routes, then hands over to the shell's
        loop (sync or asyncio; ``loops``: unary, stream, and the two recorded ones that
        wrap them in a span) with the first attempt's metadata. Nothing is allocated
        for failover until an attempt fails (:meth:`failed`), nothing for telemetry
        unless it is active (checked on every call: two attribute reads)."""
        streams = spec.kind == "unary_stream"
        run = loops[1] if streams else loops[0]
        recorded = recorded_call(self, spec, loops[3] if streams else loops[2])
        explicit = self.telemetry.explicit
        trace_state, metrics_state = TRACE_STATE, METRICS_STATE
        route = self.router.route
        current = self.source.current
        board = self.loads
        view_for, wall = board.view, board.clock
        ejected = self.outlier.ejected
        health = self._health  # empty until a shard fails: then nothing can be ejected
        inflight = self.inflight
        zone, region, default_timeout = self.zone, self.region, self.timeout
        clock = self.rules.clock
        affinity = Reason.AFFINITY
        at_ceiling = self.stats.counter("at_ceiling")  # counted off the common path only
        refused = self.stats.counter("overloaded")
        session_header = md_keys.SESSION_KEY
        inf = math.inf
        known = known_wire_form
        turn_ids = self.turn_ids[streams] if self.turn_ids is not None else None
        turn_header = md_keys.TURN_ID

        def call(
            request: Any,
            *,
            session_key: str,
            timeout: float | None = None,
            priority: str = "standard",
            idempotent: bool = False,
            metadata: Sequence[tuple[str, str]] = (),
        ) -> Any:
            # Streams (and unary calls without the GIL); the unary methods run the same
            # steps inline in AsyncCallLoops._bind_unary: keep the two in step.
            if (
                explicit
                or trace_state._TRACER_PROVIDER is not None
                or metrics_state._METER_PROVIDER is not None
            ):
                return recorded(request, session_key, timeout, priority, idempotent, metadata)
            try:  # the key's wire form, checked when first met (then: one dict lookup)
                wire = known(session_key)
            except TypeError:  # unhashable: not a key (wire_form says so)
                wire = None
            if wire is None:
                wire = wire_form(session_key)  # InvalidSessionKey before anything is sent
            if timeout is None:
                timeout = default_timeout
            elif not 0.0 < timeout < inf:  # refuses NaN too (a comparison with NaN is false)
                seconds("timeout", timeout)
            started = clock()
            now = wall()
            topology = current()
            base, due, view = board.state  # the view to route on, while still good
            if topology is not base or now >= due:
                view = view_for(topology, now)
            try:  # free unless raised (zero-cost exceptions)
                decision = route(
                    session_key,
                    view,
                    priority=priority,
                    zone=zone,
                    region=region,
                    excluded=ejected() if health else (),
                    loads=inflight,
                )
            except Overloaded:
                next(refused)
                raise
            if metadata or idempotent or priority != "standard" or decision.reason is not affinity:
                if decision.home_at_ceiling:  # only a spill or a zone fallback has it
                    next(at_ceiling)
                options: CallOptions = (priority, idempotent, tuple(metadata), None)
                md = first_metadata(session_key, decision, priority, options[2], wire)
                if turn_ids is not None:
                    md += ((turn_header, turn_ids()),)
            else:  # the common case: one metadata entry (two with turn ids), nothing else
                options = PLAIN
                if turn_ids is None:
                    md = ((session_header, wire),)
                else:
                    md = ((session_header, wire), (turn_header, turn_ids()))
            return run(spec, request, session_key, decision, md, timeout, started, options)

        call.__name__ = spec.name
        call.__doc__ = f"Call {spec.path} on the shard serving ``session_key``."
        return call

    def succeeded(
        self,
        attempts: Attempts | None,
        session_key: str,
        decision: Decision,
        shard: Shard,
        started: float | None = None,
    ) -> None:
        """The attempt on ``shard`` succeeded. Without ``attempts`` (the first attempt
        did): outlier and stats bookkeeping, and the memo learns where the call went
        (``Router.settle``; skipped when it went home and the session has no pin, the
        first test of ``settle`` itself). ``started``: the unary call's start, when
        slow answers count toward ejection (``OutlierDetector.slow_call_s``)."""
        if attempts is not None:
            attempts.succeeded(shard)
            return
        slow_s = self._slow_s
        if slow_s is not None and started is not None and self.rules.clock() - started > slow_s:
            if self.outlier.slow(shard.id):
                report_ejection(self.telemetry, shard.id, SLOW)
        elif self._health:  # some shard failed once: reset its count (else nothing to do)
            self.outlier.success(shard.id)
        next(self._calls)
        reason = decision.reason
        next(self._by_reason[reason])
        if reason is not Reason.AFFINITY or session_key in self._pins:
            self._settle(session_key, decision)

    def failed(
        self,
        attempts: Attempts | None,
        spec: MethodSpec,
        session_key: str,
        decision: Decision,
        started: float,
        timeout: float,
        options: CallOptions,
        shard: Shard,
        error: grpc.RpcError,
        md: Metadata,
        received: bool = False,
    ) -> tuple[Attempts, Shard, float, Metadata]:
        """The attempt on ``shard`` failed with ``error`` (``md``: the attempt's metadata;
        ``received``: a stream had delivered a message). Returns the call's
        :class:`Attempts` (built now when the first attempt failed: ``timeout`` is then
        the call's), the next shard, its timeout and its metadata. Raises the error for
        the caller when there is no next attempt."""
        if attempts is None:
            priority, idempotent, extra, _ = options
            attempts = Attempts(
                decision,
                session_key,
                spec.path,
                priority,
                timeout,
                idempotent,
                self.rules,
                extra,
                started=started,
                turn_id=turn_id_of(md),
            )
            attempts.first()
        attempts.received = received
        record = options[3]
        try:
            following = attempts.failed(shard, error)
        except BaseException:
            failed_over(record, spec.path, session_key, shard.id, attempts.last_failure, None)
            raise
        failed_over(record, spec.path, session_key, shard.id, attempts.last_failure, following)
        if following is None:
            raise attempts.exhausted()
        return attempts, following, attempts.timeout(), attempts.metadata_for(following)

    def _checked_shards(self) -> list[Shard]:
        """The shards the health checks ask: those this client has a channel to."""
        shards = self.source.current().shards
        return [shards[i] for i in self.channels.shard_ids() if i in shards]

    def close(self) -> None:
        """Stop following the topology, stop the health checks and close channels."""
        LIVE_CLIENTS.discard(self)
        self._unsubscribe()
        if self.health_checker is not None:
            self.health_checker.close()
        self.channels.close()
