"""RoutingPolicy: defaults, validation with precise messages, the config section."""

from __future__ import annotations

from typing import Any

import pytest

from shardroute.errors import ConfigError
from shardroute.routing import DEFAULT_PRIORITY_CEILINGS, RoutingPolicy


def test_defaults() -> None:
    p = RoutingPolicy()
    assert p.balance_factor == 1.25
    assert dict(p.priority_ceilings) == {"batch": 0.7, "standard": 0.9, "critical": 1.0}
    assert p.memo_size > 0 and p.memo_ttl_s > 0 and p.vnodes_per_weight > 0
    assert p == RoutingPolicy() and hash(p) == hash(RoutingPolicy())


def test_ceilings_are_copied_and_read_only() -> None:
    given = {"standard": 0.5}
    p = RoutingPolicy(priority_ceilings=given)
    given["standard"] = 0.9
    assert p.priority_ceilings["standard"] == 0.5
    with pytest.raises(TypeError):
        p.priority_ceilings["standard"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"balance_factor": 1.0}, "balance_factor must be a number > 1.0"),
        ({"balance_factor": 0.5}, "balance_factor"),
        ({"balance_factor": "1.5"}, "balance_factor"),
        ({"balance_factor": True}, "balance_factor"),
        ({"balance_factor": float("nan")}, "balance_factor"),
        ({"priority_ceilings": {"batch": 0}}, "priority_ceilings['batch'] must be in (0, 1]"),
        ({"priority_ceilings": {"batch": 1.5}}, "priority_ceilings['batch']"),
        ({"priority_ceilings": []}, "priority_ceilings must be an object"),
        ({"memo_size": 0}, "memo_size must be an integer > 0"),
        ({"memo_size": 2.5}, "memo_size"),
        ({"memo_ttl_s": 0}, "memo_ttl_s must be a number > 0"),
        ({"vnodes_per_weight": -1}, "vnodes_per_weight"),
        ({"vnodes_per_weight": 10**6}, "vnodes_per_weight must be <= 10000"),
        ({"max_fallbacks": -1}, "max_fallbacks"),
        ({"retry_after_s": -0.1}, "retry_after_s"),
        ({"balance": 1.5}, "unknown key(s) 'balance'"),
        ({"max_report_age_s": 0}, "max_report_age_s must be a number of seconds > 0"),
        ({"max_report_age_s": -5}, "max_report_age_s"),
        ({"max_report_age_s": float("inf")}, "max_report_age_s"),
        ({"max_report_age_s": "30"}, "max_report_age_s"),
        ({"max_report_age_s": True}, "max_report_age_s"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(section: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RoutingPolicy.from_mapping(section)
    assert needle in str(info.value)


def test_from_mapping_overrides_base_key_by_key_and_merges_ceilings() -> None:
    base = RoutingPolicy(balance_factor=1.5, memo_size=10)
    p = RoutingPolicy.from_mapping({"memo_ttl_s": 5, "priority_ceilings": {"batch": 0.5}}, base)
    assert p.balance_factor == 1.5 and p.memo_size == 10 and p.memo_ttl_s == 5
    assert dict(p.priority_ceilings) == {**DEFAULT_PRIORITY_CEILINGS, "batch": 0.5}
    q = RoutingPolicy.from_mapping({"priority_ceilings": {"premium": 0.95}})
    assert q.priority_ceilings["premium"] == 0.95 and q.priority_ceilings["batch"] == 0.7


def test_from_config_reads_the_routing_section_only() -> None:
    base = RoutingPolicy(max_fallbacks=3)
    assert RoutingPolicy.from_config(None, base) is base
    assert RoutingPolicy.from_config({"transport": {"x": 1}}, base) is base
    p = RoutingPolicy.from_config({"routing": {"balance_factor": 2}, "other": 1}, base)
    assert p.balance_factor == 2 and p.max_fallbacks == 3
    with pytest.raises(ConfigError, match="routing: the section must be a JSON object"):
        RoutingPolicy.from_config({"routing": [1, 2]})


def test_unknown_priority_names_the_known_classes() -> None:
    with pytest.raises(ConfigError, match="unknown priority class 'gold'; known: batch, critical"):
        RoutingPolicy().ceiling("gold")


def test_max_report_age_defaults_to_three_report_intervals() -> None:
    from shardroute.model import LOAD_REPORT_HEARTBEAT_S
    from shardroute.server.load import LoadReportPolicy

    assert RoutingPolicy().max_report_age_s == 3 * LOAD_REPORT_HEARTBEAT_S == 30.0
    assert LoadReportPolicy(capacity=8).heartbeat_s == LOAD_REPORT_HEARTBEAT_S
    assert RoutingPolicy.from_config({"routing": {"max_report_age_s": 5}}).max_report_age_s == 5
