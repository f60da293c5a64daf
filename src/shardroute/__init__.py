"""shardroute: run a stateful AI service as many independent shards.

Public names are re-exported here; submodules starting with ``_`` are private.
"""

from shardroute.errors import (
    ConfigError,
    EtcdBinaryNotFound,
    EtcdUnavailable,
    MalformedRecord,
    NoShardAvailable,
    Overloaded,
    ShardRouteError,
    TopologyTimeout,
    UnknownShard,
)
from shardroute.model import LoadReport, Shard, ShardState, Topology

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EtcdBinaryNotFound",
    "EtcdUnavailable",
    "LoadReport",
    "MalformedRecord",
    "NoShardAvailable",
    "Overloaded",
    "Shard",
    "ShardRouteError",
    "ShardState",
    "Topology",
    "TopologyTimeout",
    "UnknownShard",
    "__version__",
]
