"""Routing: which shard serves a request. Pure: no I/O, so it tests and benchmarks alone.

See docs/routing.md for the algorithm, its parameters and the config format.
"""

from shardroute.routing._decision import Decision, Reason
from shardroute.routing._freshness import counts, fresh_loads, freshest, report_from_trailer
from shardroute.routing._memo import AffinityMemo
from shardroute.routing._placement import AffinityPolicy, RingPlan
from shardroute.routing._plan import PlanView
from shardroute.routing._policy import (
    CONFIG_SECTION,
    DEFAULT_MAX_REPORT_AGE_S,
    DEFAULT_PRIORITY_CEILINGS,
    RoutingPolicy,
)
from shardroute.routing._ring import HashRing, key_hash
from shardroute.routing._router import Router
from shardroute.routing._table import NO_LOADS, OwnLoads, RouteTable

__all__ = [
    "CONFIG_SECTION",
    "DEFAULT_MAX_REPORT_AGE_S",
    "DEFAULT_PRIORITY_CEILINGS",
    "NO_LOADS",
    "AffinityMemo",
    "AffinityPolicy",
    "Decision",
    "HashRing",
    "OwnLoads",
    "PlanView",
    "Reason",
    "RingPlan",
    "RouteTable",
    "Router",
    "RoutingPolicy",
    "counts",
    "fresh_loads",
    "freshest",
    "key_hash",
    "report_from_trailer",
]
