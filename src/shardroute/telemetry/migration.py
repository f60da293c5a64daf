"""Spans, metrics and log records of session migrations and drains.

A migration is a span (``shardroute.migrate``) with a child per step (``fence``,
``export`` or ``store_load``, ``import``, ``warm``, ``commit``, ``release``,
``rollback``) and its outcome; a drain is a span (``shardroute.drain``) whose
migrations are its children. With no SDK configured the API's no-op tracer makes these
free; the log records are written either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from shardroute.telemetry import names
from shardroute.telemetry._setup import Telemetry

__all__ = ["MigrationInstruments", "MigrationTrace", "batched", "drain_span", "status_name"]

log = logging.getLogger(names.LOG_MIGRATION)
drain_log = logging.getLogger(names.LOG_SERVER)


class MigrationInstruments:
    """The migration instruments on one meter."""

    def __init__(self, meter: metrics.Meter, _provider: metrics.MeterProvider) -> None:
        self.count = meter.create_counter(
            names.MIGRATIONS,
            unit="{migration}",
            description="Session migrations by source, target and outcome",
        )
        self.duration = meter.create_histogram(
            names.MIGRATION_DURATION,
            unit="s",
            description="Session migrations, fence to release",
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS_S,
        )


class MigrationTrace:
    """One migration being recorded: ``with trace.step("fence"): ...`` for each step,
    then :meth:`finish` with the outcome."""

    def __init__(self, telemetry: Telemetry, session_key: str, source: str, target: str) -> None:
        self._telemetry = telemetry
        self._tracer = telemetry.tracer
        self._started = time.perf_counter()
        self.source, self.target = source, target
        self.session_attributes = telemetry.session_attributes(session_key)
        self.span = self._tracer.start_span(
            names.SPAN_MIGRATION,
            attributes={
                names.SOURCE_SHARD: source,
                names.TARGET_SHARD: target,
                **self.session_attributes,
            },
        )
        self._context = trace.set_span_in_context(self.span)

    def redecided(self, source: str, target: str) -> None:
        """The move was decided again (its first fence lost to a newer override than the
        mover knew): the source and target it now has."""
        self.source, self.target = source, target
        self.span.set_attribute(names.SOURCE_SHARD, source)
        self.span.set_attribute(names.TARGET_SHARD, target)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Any]:
        """A child span named ``shardroute.migrate.<name>`` over the block (an error
        marks it failed and propagates)."""
        child = self._tracer.start_span(
            names.SPAN_MIGRATION_STEP + name,
            context=self._context,
            attributes={names.STEP: name},
        )
        try:
            yield child
        except BaseException as error:
            child.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
            raise
        finally:
            child.end()

    def finish(self, outcome: str, error: BaseException | None = None) -> float:
        """End the migration with ``outcome`` (committed, rolled_back, conflict);
        returns its duration in seconds."""
        seconds = time.perf_counter() - self._started
        self.span.set_attribute(names.OUTCOME, outcome)
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
        self.span.end()
        attributes = {
            names.SOURCE_SHARD: self.source,
            names.TARGET_SHARD: self.target,
            names.OUTCOME: outcome,
        }
        if self._telemetry.active():
            instruments: MigrationInstruments = self._telemetry.instruments(
                "migration", MigrationInstruments
            )
            instruments.count.add(1, attributes)
            instruments.duration.record(seconds, attributes)
        level = logging.INFO if outcome == "committed" else logging.WARNING
        log.log(
            logging.DEBUG if _batched.get() else level,  # a batch logs its own summary
            "migration %s -> %s: %s in %.1f ms%s%s",
            self.source,
            self.target,
            _OUTCOMES.get(outcome, outcome),
            seconds * 1000,
            f" ({_brief(error)})" if error is not None else "",
            "" if outcome == "committed" else "; to move it still, run the move again",
            extra={
                "shardroute_event": "migration",
                "source": self.source,
                "target": self.target,
                "outcome": outcome,
                "duration_s": seconds,
                "session_hash": self.session_attributes[names.SESSION_HASH],
            },
        )
        return seconds


_OUTCOMES = {
    "rolled_back": "failed and rolled back, nothing lost (the session stays on its source)",
    "conflict": "lost to another mover or shard, nothing changed by this move",
}
"""How a move that did not commit reads in its log line."""

_batched: contextvars.ContextVar[bool] = contextvars.ContextVar("batched", default=False)


@contextlib.contextmanager
def batched() -> Iterator[None]:
    """Moves recorded in the block log their outcome at DEBUG: the batch (a drain, a
    rebalance) logs one summary line for all of them."""
    token = _batched.set(True)
    try:
        yield
    finally:
        _batched.reset(token)


def status_name(error: BaseException | None) -> str | None:
    """The gRPC status code's name of a finished call's error, else None."""
    code = getattr(error, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:  # not a finished call
            pass
    return None


def _brief(error: BaseException) -> str:
    """An error in a few words: a gRPC status code, else its message's first 160
    characters."""
    return f"{type(error).__name__}: {status_name(error) or error}"[:160]


@contextlib.contextmanager
def drain_span(telemetry: Telemetry, shard_id: str, sessions: int) -> Iterator[Any]:
    """A span over a drain's migrations (current in this thread: the migrations
    started from it, in any thread via :func:`carry`, are its children)."""
    span = telemetry.tracer.start_span(
        names.SPAN_DRAIN, attributes={names.SHARD: shard_id, names.SESSION_COUNT: sessions}
    )
    drain_log.info(
        "shard %s draining: moving %d session(s)",
        shard_id,
        sessions,
        extra={"shardroute_event": "drain", "shard": shard_id, "sessions": sessions},
    )
    with trace.use_span(span, end_on_exit=True):
        yield span


def carry() -> Any:
    """The current OpenTelemetry context, to :func:`attached` in a worker thread."""
    return otel_context.get_current()


@contextlib.contextmanager
def attached(context: Any) -> Iterator[None]:
    """Make ``context`` (from :func:`carry`) current for the block."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
