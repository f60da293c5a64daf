"""shardroute.telemetry: one place for every name, and docs/observability.md lists them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardroute.errors import ConfigError
from shardroute.telemetry import names, serve_prometheus, session_hash

DOC = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
INSTRUMENTS = [
    "CLIENT_DURATION",
    "DECISIONS",
    "SPILLS",
    "FAILOVERS",
    "REDIRECTS",
    "OVERLOADED",
    "AT_CEILING",
    "EJECTIONS",
    "EJECTED",
    "STALENESS",
    "REVISION",
    "MALFORMED",
    "CHANNELS",
    "TOPOLOGY_EVENTS",
    "SERVER_DURATION",
    "INFLIGHT",
    "QUEUE",
    "SESSIONS",
    "CHECKPOINT_DURATION",
    "CHECKPOINT_SIZE",
    "MIGRATIONS",
    "MIGRATION_DURATION",
    "TAKEOVERS",
    "REDIRECTS_SENT",
]


def test_every_instrument_is_documented_and_named_once() -> None:
    values = [getattr(names, constant) for constant in INSTRUMENTS]
    assert len(set(values)) == len(values)
    missing = [value for value in values if f"| `{value}` |" not in DOC]
    assert missing == []


def test_every_shardroute_attribute_and_logger_is_documented() -> None:
    public = {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    attributes = [v for v in public.values() if v.startswith("shardroute.") and v.count(".") >= 1]
    missing = [value for value in attributes if value not in DOC]
    assert missing == []


def test_durations_resolve_loopback_calls_up_to_minutes() -> None:
    buckets = names.DURATION_BUCKETS_S
    assert list(buckets) == sorted(buckets)
    assert buckets[0] <= 50e-6 and buckets[-1] >= 120


def test_the_session_hash_is_short_stable_and_not_the_key() -> None:
    assert session_hash("conv-1") == session_hash("conv-1") != session_hash("conv-2")
    assert len(session_hash("conv-1")) == 16 and "conv" not in session_hash("conv-1")


@pytest.mark.parametrize("port", [0, -1, 70000])
def test_serve_prometheus_refuses_a_bad_port(port: int) -> None:
    with pytest.raises(ConfigError, match="metrics port"):
        serve_prometheus(port)


def test_the_api_still_has_the_slots_the_no_sdk_check_reads() -> None:
    # Without them the clients would take the recorded path on every call (correct but
    # slower): a new opentelemetry-api that renames them must be noticed here.
    import opentelemetry.metrics._internal as metrics_state
    import opentelemetry.trace as trace_state

    from shardroute.telemetry._setup import METRICS_STATE, TRACE_STATE

    assert TRACE_STATE is trace_state and METRICS_STATE is metrics_state
