"""Transport: channels, the attempt loop, failover and outlier ejection.

Shared by :class:`shardroute.ShardClient` and :class:`shardroute.AsyncShardClient`.
"""

from shardroute.transport.attempts import Attempts, CallRules
from shardroute.transport.channels import ChannelPool
from shardroute.transport.failures import Failure, classify, translate
from shardroute.transport.health import HealthChecks
from shardroute.transport.inflight import InFlight
from shardroute.transport.methods import MethodSpec, describe_stub
from shardroute.transport.outlier import OutlierDetector
from shardroute.transport.retry import RetryPolicy
from shardroute.transport.stats import CallStats

__all__ = [
    "Attempts",
    "CallRules",
    "CallStats",
    "ChannelPool",
    "Failure",
    "HealthChecks",
    "InFlight",
    "MethodSpec",
    "OutlierDetector",
    "RetryPolicy",
    "classify",
    "describe_stub",
    "translate",
]
