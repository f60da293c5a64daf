"""shardroute: run a stateful AI service as many independent shards.

Public names are re-exported here; submodules starting with ``_`` are private.
"""

from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.discovery.source import TopologySource
from shardroute.errors import (
    CallFailed,
    ChunkError,
    ClientClosed,
    Compacted,
    ConfigError,
    DeadlineExceeded,
    EtcdBinaryNotFound,
    EtcdNoSpace,
    EtcdUnavailable,
    InvalidSessionKey,
    InvalidTurnId,
    LeaseNotFound,
    MalformedRecord,
    MigrationConflict,
    MigrationFailed,
    NoShardAvailable,
    OutcomeUnknown,
    Overloaded,
    PayloadTooLarge,
    RedisBinaryNotFound,
    Refused,
    ServerLifecycleError,
    SessionStoreUnavailable,
    ShardRouteError,
    ShardStartError,
    ShardUnavailable,
    StaleState,
    StateTooLarge,
    TopologyTimeout,
    TurnAlreadyApplied,
    UnknownMethod,
    UnknownShard,
)
from shardroute.model import LoadReport, Shard, ShardState, Topology
from shardroute.routing import Decision, Reason, Router, RoutingPolicy
from shardroute.server import AsyncShardServer, ShardServer, session_key
from shardroute.transport import HealthChecks, OutlierDetector, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AsyncShardClient",
    "AsyncShardServer",
    "CallFailed",
    "ChunkError",
    "ClientClosed",
    "Compacted",
    "ConfigError",
    "DeadlineExceeded",
    "Decision",
    "EtcdBinaryNotFound",
    "EtcdNoSpace",
    "EtcdTopologySource",
    "EtcdUnavailable",
    "HealthChecks",
    "InMemoryTopologySource",
    "InvalidSessionKey",
    "InvalidTurnId",
    "LeaseNotFound",
    "LoadReport",
    "MalformedRecord",
    "MigrationConflict",
    "MigrationFailed",
    "NoShardAvailable",
    "OutcomeUnknown",
    "OutlierDetector",
    "Overloaded",
    "PayloadTooLarge",
    "Reason",
    "RedisBinaryNotFound",
    "Refused",
    "RetryPolicy",
    "Router",
    "RoutingPolicy",
    "ServerLifecycleError",
    "SessionStoreUnavailable",
    "Shard",
    "ShardClient",
    "ShardRouteError",
    "ShardServer",
    "ShardStartError",
    "ShardState",
    "ShardUnavailable",
    "StaleState",
    "StateTooLarge",
    "Topology",
    "TopologySource",
    "TopologyTimeout",
    "TurnAlreadyApplied",
    "UnknownMethod",
    "UnknownShard",
    "__version__",
    "session_key",
]
