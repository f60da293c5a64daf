"""Shard servers: subclass :class:`ShardServer` (threads) or :class:`AsyncShardServer`
(asyncio), add your servicers in ``add_services``, and the shard registers itself in etcd,
reports its load, serves health and control, and drains gracefully. See docs/server.md.
"""

from shardroute.errors import ServerLifecycleError
from shardroute.server._async import AsyncShardServer
from shardroute.server._base import session_key
from shardroute.server._chunks import DEFAULT_CHUNK_BYTES
from shardroute.server._core import (
    LoadAccounting,
    LoadReportPolicy,
    ServerConfig,
    ServerState,
    SessionSummary,
)
from shardroute.server._ownership import Action, Decision, decide
from shardroute.server._sessions import (
    AsyncTurn,
    JsonCodec,
    Refused,
    SessionCodec,
    SessionHost,
    Turn,
)
from shardroute.server._sync import ShardServer

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "Action",
    "AsyncShardServer",
    "AsyncTurn",
    "Decision",
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
    "decide",
    "session_key",
]
