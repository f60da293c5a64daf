"""The client's spans and metrics: :class:`CallRecord` (one routed call) and the
client's instruments.

A call is recorded only when telemetry is active (an SDK configured, or a provider given
to the client); otherwise the client takes its plain path and nothing here runs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shardroute.errors import DeadlineExceeded, Overloaded, ShardUnavailable
from shardroute.telemetry import names
from shardroute.telemetry._setup import LiveSet, Telemetry, session_hash

if TYPE_CHECKING:
    from shardroute.model import Shard
    from shardroute.routing import Decision

__all__ = [
    "LIVE_CLIENTS",
    "CallRecord",
    "ClientInstruments",
    "at_ceiling",
    "client_instruments",
    "ejected",
    "failed_over",
    "overloaded",
]

log = logging.getLogger(names.LOG_CLIENT)

LIVE_CLIENTS = LiveSet()
"""Client cores whose gauges are reported (each has ``telemetry``, ``source``,
``outlier`` and ``channels``)."""


class ClientInstruments:
    """The client instruments on one meter (shared by the clients on its provider)."""

    def __init__(self, meter: metrics.Meter, provider: metrics.MeterProvider) -> None:
        self.duration = meter.create_histogram(
            names.CLIENT_DURATION,
            unit="s",
            description="Routed calls, from routing to the last attempt's end",
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS_S,
        )
        self.decisions = meter.create_counter(
            names.DECISIONS, unit="{call}", description="Routed calls by routing reason"
        )
        self.spills = meter.create_counter(
            names.SPILLS, unit="{call}", description="Calls sent past a full home shard"
        )
        self.failovers = meter.create_counter(
            names.FAILOVERS, unit="{attempt}", description="Attempts moved to another shard"
        )
        self.redirects = meter.create_counter(
            names.REDIRECTS, unit="{redirect}", description="Redirects followed"
        )
        self.overloaded = meter.create_counter(
            names.OVERLOADED, unit="{call}", description="Calls refused as Overloaded"
        )
        self.at_ceiling = meter.create_counter(
            names.AT_CEILING,
            unit="{call}",
            description="Calls routed past a home at the ceiling of their priority",
        )
        self.ejections = meter.create_counter(
            names.EJECTIONS, unit="{ejection}", description="Shards ejected by outlier detection"
        )
        meter.create_observable_gauge(
            names.EJECTED,
            [lambda _: _observe(provider, lambda c: len(c.outlier.ejected()))],
            unit="{shard}",
            description="Shards ejected now",
        )
        meter.create_observable_gauge(
            names.STALENESS,
            [lambda _: _observe(provider, lambda c: c.source.staleness())],
            unit="s",
            description="Seconds since the topology was last known current (0: current)",
        )
        meter.create_observable_gauge(
            names.REVISION,
            [lambda _: _observe(provider, lambda c: c.source.current().revision)],
            unit="{revision}",
            description="etcd revision of the topology the client routes on",
        )
        meter.create_observable_counter(
            names.MALFORMED,
            [lambda _: _observe(provider, lambda c: getattr(c.source, "malformed_total", 0))],
            unit="{record}",
            description="Malformed etcd records skipped",
        )
        meter.create_observable_gauge(
            names.CHANNELS,
            [lambda _: _observe(provider, lambda c: len(c.channels))],
            unit="{channel}",
            description="Open channels to shards",
        )


def _observe(provider: Any, value: Any) -> list[metrics.Observation]:
    return LIVE_CLIENTS.observe(provider, value, lambda c: {names.SERVICE: c.source.service})


def client_instruments(telemetry: Telemetry) -> ClientInstruments:
    """The client instruments of ``telemetry``'s meter provider."""
    result: ClientInstruments = telemetry.instruments("client", ClientInstruments)
    return result


def status_code(error: BaseException | None) -> grpc.StatusCode:
    """The gRPC status a call ended with (OK without ``error``)."""
    if error is None:
        return grpc.StatusCode.OK
    for candidate in (error, error.__cause__):
        code = getattr(candidate, "code", None)
        if isinstance(code, grpc.StatusCode):
            return code
        if callable(code) and isinstance(candidate, grpc.RpcError):
            try:
                found = code()
            except Exception:
                found = None
            if isinstance(found, grpc.StatusCode):
                return found
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, ShardUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _add_address(attributes: dict[str, Any], address: str) -> None:
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        attributes[names.SERVER_ADDRESS] = host.strip("[]")
        attributes[names.SERVER_PORT] = int(port)
    else:
        attributes[names.SERVER_ADDRESS] = address


class CallRecord:
    """One routed call being recorded: its span (made current only for propagation, never
    across the caller's code) and what the metrics need at its end."""

    __slots__ = (
        "address",
        "attempts",
        "home",
        "instruments",
        "metadata",
        "method",
        "reason",
        "service",
        "shard",
        "span",
        "started",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        path: str,
        session_key: str,
        decision: Decision,
        priority: str,
    ) -> None:
        self.instruments = client_instruments(telemetry)
        service, _, method = path.lstrip("/").rpartition("/")
        self.service, self.method = service, method
        shard = decision.shard
        self.address = shard.address
        self.home = shard.id
        self.shard = shard.id
        self.reason = decision.reason.value
        self.attempts = 1
        self.started = time.perf_counter()
        attributes: dict[str, Any] = {
            names.RPC_SYSTEM: names.GRPC,
            names.RPC_SERVICE: service,
            names.RPC_METHOD: method,
            names.SHARD: shard.id,
            names.REASON: self.reason,
            names.PRIORITY: priority,
            **telemetry.session_attributes(session_key),
        }
        _add_address(attributes, shard.address)
        self.span = telemetry.tracer.start_span(
            path.lstrip("/"), kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        self.metadata = tuple(carrier.items())
        """The trace context entries to send with every attempt (W3C traceparent)."""
        if decision.reason.value == "spill":
            self.instruments.spills.add(1, {names.PRIORITY: priority})

    def attempt_failed(self, shard_id: str, failure: str, following: Shard | None) -> None:
        """The attempt on ``shard_id`` failed (``failure``: its class, or
        ``redirected``); ``following``: the shard tried next (None: the call ends)."""
        self.span.add_event(
            names.EVENT_ATTEMPT_FAILED,
            {names.SHARD: shard_id, names.FAILURE: failure, names.ATTEMPTS: self.attempts},
        )
        if following is None:
            return
        redirected = failure == "redirected"
        self.reason = "redirect" if redirected else "failover"
        self.shard, self.address = following.id, following.address
        self.attempts += 1
        counter = self.instruments.redirects if redirected else self.instruments.failovers
        counter.add(1, {names.SHARD: shard_id})

    def finish(self, error: BaseException | None = None) -> None:
        """The call ended (``error``: what it raised)."""
        code = status_code(error)
        span = self.span
        final: dict[str, Any] = {
            names.RPC_GRPC_STATUS_CODE: code.value[0],
            names.ATTEMPTS: self.attempts,
        }
        if self.attempts > 1:
            final[names.SHARD] = self.shard
            final[names.REASON] = self.reason
            if self.shard != self.home:
                final[names.HOME] = self.home
            _add_address(final, self.address)
        if error is not None and code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
            final[names.ERROR_TYPE] = type(error).__name__
        span.set_attributes(final)
        span.end()
        attributes = {
            names.SHARD: self.shard,
            names.RPC_SERVICE: self.service,
            names.RPC_METHOD: self.method,
            names.RPC_GRPC_STATUS_CODE: code.value[0],
            names.REASON: self.reason,
        }
        self.instruments.duration.record(time.perf_counter() - self.started, attributes)
        self.instruments.decisions.add(1, {names.REASON: self.reason})


def failed_over(
    record: CallRecord | None,
    method: str,
    session_key: str,
    shard_id: str,
    failure: str,
    following: Shard | None,
) -> None:
    """An attempt of ``method`` on ``shard_id`` failed with ``failure``: log where the
    call goes next (``following``; None: nowhere, the caller gets the error) and add it
    to the call's span."""
    if record is not None:
        record.attempt_failed(shard_id, failure, following)
    if following is None:
        return
    what = "redirect" if failure == "redirected" else "failover"
    log.info(
        "%s of %s from shard %s to %s (%s)",
        what,
        method,
        shard_id,
        following.id,
        failure,
        extra={
            "shardroute_event": what,
            "method": method,
            "shard": shard_id,
            "target": following.id,
            "failure": failure,
            "session_hash": session_hash(session_key),
        },
    )


def overloaded(telemetry: Telemetry, priority: str) -> None:
    """Count a call refused as Overloaded (no shard may take ``priority`` now)."""
    client_instruments(telemetry).overloaded.add(1, {names.PRIORITY: priority})


def at_ceiling(telemetry: Telemetry, priority: str) -> None:
    """Count a call routed past its home, which was at ``priority``'s ceiling."""
    client_instruments(telemetry).at_ceiling.add(1, {names.PRIORITY: priority})


_EJECTION_CAUSES = {
    "not_sent": "calls could not reach it",
    "maybe_executed": "calls broke off mid-call",
    "deadline": "calls ran past their deadline",
    "slow": "it answered too slowly",
    "health_check": "it left health checks unanswered",
}
"""An ejection's cause (a failure class, ``slow`` or ``health_check``) in plain words."""


def ejected(telemetry: Telemetry, shard_id: str, cause: str) -> None:
    """A shard was ejected by this client's outlier detection: log and count it."""
    log.warning(
        "shard %s ejected by this client (%s%s): its calls go to other shards until it is "
        "tried again; no data is at risk; check the shard if this repeats",
        shard_id,
        cause,
        f": {_EJECTION_CAUSES[cause]}" if cause in _EJECTION_CAUSES else "",
        extra={"shardroute_event": "ejection", "shard": shard_id, "cause": cause},
    )
    if telemetry.active():
        client_instruments(telemetry).ejections.add(1, {names.SHARD: shard_id, names.CAUSE: cause})
