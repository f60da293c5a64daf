"""OpenTelemetry traces and metrics of shardroute's clients and shards, in one place.

The library uses the OpenTelemetry API only; the SDK (and an exporter) is the user's
choice: ``pip install 'shardroute[otel]'``. With no SDK configured nothing is recorded
and the per-call cost is two attribute reads. docs/observability.md lists every span,
instrument, attribute and logger (all named in :mod:`shardroute.telemetry.names`).

- :class:`Telemetry`: where one client's or shard's spans and metrics go (explicit
  providers, or the global ones), and whether the raw session key may be recorded.
- :func:`serve_prometheus`: a Prometheus ``/metrics`` endpoint over the SDK.
"""

from shardroute.telemetry._setup import Telemetry, sdk_configured, session_hash
from shardroute.telemetry.prometheus import serve_prometheus

__all__ = ["Telemetry", "sdk_configured", "serve_prometheus", "session_hash"]
