"""Shard servers: subclass :class:`ShardServer` (threads) or :class:`AsyncShardServer`
(asyncio), add your servicers in ``add_services``, and the shard registers itself in etcd,
reports its load, serves health and control, and drains gracefully. See docs/server.md.
"""

from shardroute.errors import ServerLifecycleError
from shardroute.server._async import AsyncShardServer
from shardroute.server._base import session_key
from shardroute.server._sync import ShardServer
from shardroute.server.config import ServerConfig
from shardroute.server.lifecycle import ServerState
from shardroute.server.load import LoadAccounting, LoadReportPolicy
from shardroute.sessions import (
    AsyncTurn,
    JsonCodec,
    Refused,
    SessionCodec,
    SessionHost,
    SessionSummary,
    Turn,
)

__all__ = [
    "AsyncShardServer",
    "AsyncTurn",
    "JsonCodec",
    "LoadAccounting",
    "LoadReportPolicy",
    "Refused",
    "ServerConfig",
    "ServerLifecycleError",
    "ServerState",
    "SessionCodec",
    "SessionHost",
    "SessionSummary",
    "ShardServer",
    "Turn",
    "session_key",
]
