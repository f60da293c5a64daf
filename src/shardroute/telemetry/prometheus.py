"""A Prometheus ``/metrics`` endpoint over the OpenTelemetry SDK (``shardroute[otel]``)."""

from __future__ import annotations

from typing import Any

from shardroute.errors import ConfigError

__all__ = ["serve_prometheus"]


def serve_prometheus(port: int, *, host: str = "127.0.0.1", set_global: bool = True) -> Any:
    """Serve every metric of a new SDK ``MeterProvider`` at
    ``http://host:port/metrics`` (Prometheus text format) and return that provider.

    With ``set_global`` (the default) the provider becomes the global one, so every
    shardroute client and shard in the process reports to it; the API allows that once
    per process (a second call cannot replace it: pass ``set_global=False`` and give the
    returned provider to ``Telemetry(meter_provider=...)`` instead). Port 0 is refused:
    Prometheus must know where to scrape. Raises :class:`~shardroute.errors.ConfigError`
    when the ``otel`` extra is not installed.
    """
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"metrics port must be 1..65535, got {port!r}")
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as error:
        raise ConfigError(
            "serving Prometheus metrics needs the OpenTelemetry SDK and its Prometheus "
            "exporter: pip install 'shardroute[otel]'"
        ) from error
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {error}") from error
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    if set_global:
        metrics.set_meter_provider(provider)
    return provider
