"""Capture shardroute's spans and metrics in tests, with the real OpenTelemetry SDK
(``shardroute[otel]`` or the test extra).

    capture = OtelCapture()
    client = ShardClient(source, telemetry=capture.telemetry())
    ...
    span = capture.spans("chat.Chat/Turn")[0]
    assert capture.value("shardroute.client.decisions", {"shardroute.reason": "spill"})

The providers are explicit, not global: the API lets a process set its global providers
once, and tests must not depend on their order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shardroute.telemetry import Telemetry

__all__ = ["OtelCapture"]


class OtelCapture:
    """An SDK tracer provider with an in-memory exporter and an SDK meter provider with
    an in-memory reader."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def telemetry(self, *, record_session_key: bool = False) -> Telemetry:
        """A :class:`Telemetry` sending to these providers."""
        return Telemetry(
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            record_session_key=record_session_key,
        )

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans (named ``name``), oldest first."""
        found = list(self.exporter.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` now (collects)."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def value(self, name: str, attributes: Mapping[str, Any] | None = None) -> float:
        """The sum of metric ``name``'s points whose attributes include ``attributes``
        (a histogram point counts its ``count``)."""
        total = 0.0
        for point in self.points(name):
            if attributes and any(point.attributes.get(k) != v for k, v in attributes.items()):
                continue
            total += point.count if hasattr(point, "count") else point.value
        return total

    def shutdown(self) -> None:
        """Stop both providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
