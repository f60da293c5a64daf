"""Where a client's or a shard's spans and metrics go: :class:`Telemetry`.

The library uses the OpenTelemetry API only. With no SDK configured (the API's global
providers are still the proxies) a client takes a path that creates no span and records
no metric; that check is two module attribute reads per call, made on every call, so an
SDK configured after the client was created is honoured from the next call on.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import opentelemetry.metrics._internal as _metrics_state
import opentelemetry.trace as _trace_state
from opentelemetry import metrics, trace
from opentelemetry.environment_variables import (
    OTEL_PYTHON_METER_PROVIDER,
    OTEL_PYTHON_TRACER_PROVIDER,
)

from shardroute.telemetry import names

__all__ = ["METRICS_STATE", "TRACE_STATE", "Telemetry", "sdk_configured", "session_hash"]


class _Unknown:
    """Stands for an API module without the slot read below (a future API): its
    provider counts as set, so the clients always take the recorded path (correct,
    only slower) instead of failing."""

    _TRACER_PROVIDER: object = True
    _METER_PROVIDER: object = True


TRACE_STATE: Any = _trace_state if hasattr(_trace_state, "_TRACER_PROVIDER") else _Unknown
"""The API module holding the global tracer provider (``_TRACER_PROVIDER``: None until
an SDK sets one). The clients read it on every call: the cheapest check there is."""
METRICS_STATE: Any = _metrics_state if hasattr(_metrics_state, "_METER_PROVIDER") else _Unknown
"""The API module holding the global meter provider (``_METER_PROVIDER``)."""

_VERSION = "0.1.0"


def _load_env_providers() -> None:
    # Providers named by environment variables are loaded by the API on first use; load
    # them now so the cheap check below sees them.
    if OTEL_PYTHON_TRACER_PROVIDER in os.environ:
        trace.get_tracer_provider()
    if OTEL_PYTHON_METER_PROVIDER in os.environ:
        metrics.get_meter_provider()


_load_env_providers()


def sdk_configured() -> bool:
    """True when a global tracer or meter provider was set (an SDK is configured)."""
    return TRACE_STATE._TRACER_PROVIDER is not None or METRICS_STATE._METER_PROVIDER is not None


def session_hash(session_key: str) -> str:
    """A short stable hash of a session key (16 hex digits of BLAKE2b): the same in
    every process, and not the key itself (keys can be personal data)."""
    return hashlib.blake2b(session_key.encode(), digest_size=8).hexdigest()


class Telemetry:
    """Where the spans and metrics of one client or shard go.

    Args:
        tracer_provider: spans go here; None: the global provider (``trace.
            set_tracer_provider``), looked up when the first span is made.
        meter_provider: metrics go here; None: the global provider.
        record_session_key: put the raw session key on spans
            (``shardroute.session.key``). Off by default: spans carry only
            ``shardroute.session.hash``, since session keys can be personal data.

    With neither provider given and no global SDK configured, :meth:`active` is False
    and the library records nothing (the per-call check costs two attribute reads).
    """

    __slots__ = (
        "__weakref__",
        "_instruments",
        "_lock",
        "_meter_provider",
        "_tracer",
        "_tracer_provider",
        "explicit",
        "record_session_key",
    )

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        record_session_key: bool = False,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self.record_session_key = record_session_key
        self.explicit = tracer_provider is not None or meter_provider is not None
        """A provider was given: always active."""
        self._tracer: trace.Tracer | None = None
        self._instruments: dict[str, Any] = {}
        self._lock = threading.Lock()

    def active(self) -> bool:
        """True when spans or metrics would go somewhere."""
        return self.explicit or sdk_configured()

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer (made on first use, from the given or the global provider)."""
        tracer = self._tracer
        if tracer is None:
            provider = self._tracer_provider or trace.get_tracer_provider()
            tracer = provider.get_tracer(names.INSTRUMENTATION_SCOPE, _VERSION)
            if self._tracer_provider is not None or TRACE_STATE._TRACER_PROVIDER is not None:
                self._tracer = tracer  # a real provider: keep it
        return tracer

    @property
    def meter_provider(self) -> metrics.MeterProvider:
        """The meter provider metrics go to (the given one, else the global one)."""
        return self._meter_provider or metrics.get_meter_provider()

    def instruments(
        self, kind: str, make: Callable[[metrics.Meter, metrics.MeterProvider], Any]
    ) -> Any:
        """The instrument set ``kind`` (client or shard), made once per meter provider
        with ``make(meter, provider)`` (shared by every client or shard on that provider)."""
        provider = self.meter_provider
        if self._meter_provider is None and _metrics_state._METER_PROVIDER is None:
            provider = _NO_METRICS  # not the proxy: its instruments would report twice later
        key = (kind, id(provider))
        found = _SHARED.get(key)
        if found is None or found[0]() is not provider:
            with _SHARED_LOCK:
                found = _SHARED.get(key)
                if found is None or found[0]() is not provider:
                    meter = provider.get_meter(names.INSTRUMENTATION_SCOPE, _VERSION)
                    found = (_ref(provider), make(meter, provider))
                    for gone in [k for k, (ref, _) in _SHARED.items() if ref() is None]:
                        del _SHARED[gone]  # providers that were shut down and collected
                    _SHARED[key] = found
        return found[1]

    def session_attributes(self, session_key: str) -> dict[str, str]:
        """The span attributes naming a session: its hash, and the key on opt-in."""
        attributes = {names.SESSION_HASH: session_hash(session_key)}
        if self.record_session_key:
            attributes[names.SESSION_KEY] = session_key
        return attributes

    def goes_to(self, provider: metrics.MeterProvider) -> bool:
        """True when this telemetry's metrics go to ``provider``."""
        return self.meter_provider is provider


_NO_METRICS = metrics.NoOpMeterProvider()
_SHARED: dict[tuple[str, int], tuple[Callable[[], object], Any]] = {}
_SHARED_LOCK = threading.Lock()


def _ref(provider: object) -> Callable[[], object]:
    try:
        return weakref.ref(provider)
    except TypeError:  # not weakly referenceable: hold it
        return lambda: provider


class LiveSet:
    """Objects (clients, shards) whose gauges a callback reports: held weakly, so a
    forgotten client stops being reported."""

    def __init__(self) -> None:
        self._items: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, item: Any) -> None:
        """Report ``item`` until it is discarded or collected."""
        self._items.add(item)

    def discard(self, item: Any) -> None:
        """Stop reporting ``item``."""
        self._items.discard(item)

    def observe(
        self,
        provider: metrics.MeterProvider,
        value: Callable[[Any], float],
        labels: Callable[[Any], dict[str, Any]],
    ) -> list[metrics.Observation]:
        """One observation per live item whose telemetry goes to ``provider``:
        ``value(item)`` with ``labels(item)`` (an item failing to answer, one being
        closed, is skipped this time)."""
        found = []
        for item in list(self._items):
            if not item.telemetry.goes_to(provider):
                continue
            try:
                found.append(metrics.Observation(value(item), labels(item)))
            except Exception:
                continue
        return found
