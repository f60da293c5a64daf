"""The shard's spans and metrics: a server span per accounted call (a child of the
client's span through the W3C trace context in the call's metadata) and the shard's
instruments.

Spans and the duration histogram are made only when telemetry is active; the gauges
and counters read the shard's own counters when the SDK collects.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shardroute import metadata
from shardroute.telemetry import names
from shardroute.telemetry._setup import LiveSet, Telemetry

__all__ = ["LIVE_SHARDS", "ServerRecord", "ShardInstruments", "shard_instruments"]

LIVE_SHARDS = LiveSet()
"""Shard servers whose gauges are reported (each has ``telemetry``, ``shard_id``,
``accounting`` and ``sessions``)."""


class ShardInstruments:
    """The shard instruments on one meter (shared by the shards on its provider)."""

    def __init__(self, meter: metrics.Meter, provider: metrics.MeterProvider) -> None:
        self.duration = meter.create_histogram(
            names.SERVER_DURATION,
            unit="s",
            description="Calls served by the shard (a turn), start to last message",
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS_S,
        )
        self.checkpoint_duration = meter.create_histogram(
            names.CHECKPOINT_DURATION,
            unit="s",
            description="Session checkpoints (turn record or snapshot written to the store)",
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS_S,
        )
        self.checkpoint_size = meter.create_histogram(
            names.CHECKPOINT_SIZE,
            unit="By",
            description="Bytes written to the session store by one checkpoint",
            explicit_bucket_boundaries_advisory=names.SIZE_BUCKETS_BYTES,
        )

        def gauge(name: str, unit: str, description: str, value: Any) -> None:
            meter.create_observable_gauge(
                name, [lambda _: _observe(provider, value)], unit=unit, description=description
            )

        def counter(name: str, unit: str, description: str, value: Any) -> None:
            meter.create_observable_counter(
                name, [lambda _: _observe(provider, value)], unit=unit, description=description
            )

        gauge(names.INFLIGHT, "{call}", "Calls in flight", lambda s: s.accounting.inflight)
        gauge(
            names.QUEUE, "{call}", "Calls waiting for a worker", lambda s: s.accounting.queue_depth
        )
        gauge(names.SESSIONS, "{session}", "Sessions held", lambda s: len(s.sessions))
        counter(
            names.TAKEOVERS,
            "{session}",
            "Sessions taken over from the store (owner gone)",
            lambda s: s.sessions.takeovers_total,
        )
        counter(
            names.REDIRECTS_SENT,
            "{redirect}",
            "Calls redirected to the session's owner",
            lambda s: s.sessions.redirects_total,
        )


def _observe(provider: Any, value: Any) -> list[metrics.Observation]:
    return LIVE_SHARDS.observe(provider, value, lambda s: {names.SHARD: s.shard_id})


def shard_instruments(telemetry: Telemetry) -> ShardInstruments:
    """The shard instruments of ``telemetry``'s meter provider."""
    result: ShardInstruments = telemetry.instruments("shard", ShardInstruments)
    return result


def checkpointed(telemetry: Telemetry, shard_id: str, seconds: float, written: int) -> None:
    """Record one checkpoint: its duration and the bytes it wrote."""
    if telemetry.active():
        instruments = shard_instruments(telemetry)
        attributes = {names.SHARD: shard_id}
        instruments.checkpoint_duration.record(seconds, attributes)
        instruments.checkpoint_size.record(written, attributes)


class ServerRecord:
    """One call served, being recorded: its server span and its duration. Made only when
    telemetry is active (:meth:`start` returns None otherwise)."""

    __slots__ = ("_attributes", "_instruments", "_pending", "_started", "_token", "span")

    def __init__(self, telemetry: Telemetry, shard_id: str, method: str, context: Any) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        pairs = tuple(context.invocation_metadata() or ())
        carrier = {k: v for k, v in pairs if isinstance(v, str)}
        reason = carrier.get(metadata.REASON, "affinity")
        attributes: dict[str, Any] = {
            names.RPC_SYSTEM: names.GRPC,
            names.RPC_SERVICE: service,
            names.RPC_METHOD: name,
            names.SHARD: shard_id,
            names.REASON: reason,
            names.PRIORITY: carrier.get(metadata.PRIORITY, "standard"),
        }
        key = carrier.get(metadata.SESSION_KEY)
        if key:
            attributes.update(telemetry.session_attributes(key))
        self.span = telemetry.tracer.start_span(
            method.lstrip("/"),
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        self._instruments = shard_instruments(telemetry)
        self._attributes = {
            names.SHARD: shard_id,
            names.RPC_SERVICE: service,
            names.RPC_METHOD: name,
        }
        self._token: object | None = None
        self._pending = [True]
        self._started = time.perf_counter()

    @classmethod
    def start(
        cls, telemetry: Telemetry, shard_id: str, method: str, context: Any
    ) -> ServerRecord | None:
        """A record of this call, or None when telemetry is off."""
        if not telemetry.active():
            return None
        return cls(telemetry, shard_id, method, context)

    def attach(self) -> None:
        """Make the span current (unary handlers: the user's own spans become its
        children). Undone by :meth:`finish`, in the same thread or task."""
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def finish(self, context: Any, error: BaseException | None = None) -> None:
        """The call ended (``error``: what the handler raised). Only the first call
        counts (a cancelled stream may also finish from its done callback)."""
        try:
            self._pending.pop()  # atomic: only the first caller gets past this
        except IndexError:
            return
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        code = _code(context, error)
        span = self.span
        span.set_attribute(names.RPC_GRPC_STATUS_CODE, code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        attributes = {**self._attributes, names.RPC_GRPC_STATUS_CODE: code.value[0]}
        self._instruments.duration.record(time.perf_counter() - self._started, attributes)


def _code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    getter = getattr(context, "code", None)
    try:
        code = getter() if callable(getter) else None
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some contexts give the raw number
        found = next((c for c in grpc.StatusCode if c.value[0] == code), None)
        if found is not None:
            return found
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
