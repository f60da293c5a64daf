"""Sessions that outlive their shard: where their state lives, who serves them, and how
they move (docs/migration.md).

- the store: :class:`SessionStore` (:class:`EtcdSessionStore` by default,
  :class:`RedisSessionStore` for volume, :class:`InMemorySessionStore` for tests), a
  snapshot plus a log of turn records per session (:mod:`.envelope`), folded by a
  :class:`FoldPolicy`;
- overrides: :class:`OverrideStore` reads and compare-and-swaps where a session lives;
- ownership: :func:`decide`, the pure rules a shard applies to every call;
- the shard side: :class:`SessionHost` (held sessions, turns, migration calls, expiry),
  :class:`Turn` / :class:`AsyncTurn`, codecs (:class:`JsonCodec`);
- the move: :class:`Migrator` and the chunk wire format (:mod:`.chunks`).
"""

from shardroute.errors import Refused
from shardroute.sessions._host_base import SessionSummary
from shardroute.sessions.applied import AppliedTurn, TurnMemory
from shardroute.sessions.chunks import DEFAULT_CHUNK_BYTES
from shardroute.sessions.codecs import JsonCodec, SessionCodec
from shardroute.sessions.envelope import (
    FoldPolicy,
    LogPosition,
    StoredState,
    decode_envelope,
    encode_envelope,
)
from shardroute.sessions.etcd_store import EtcdSessionStore
from shardroute.sessions.host import SessionHost
from shardroute.sessions.migrator import MigrationResult, Migrator
from shardroute.sessions.overrides import OverrideStore, next_override
from shardroute.sessions.ownership import Action, OwnershipDecision, decide
from shardroute.sessions.redis_options import RedisOptions
from shardroute.sessions.redis_store import RedisSessionStore
from shardroute.sessions.store import DEFAULT_MAX_BYTES, InMemorySessionStore, SessionStore
from shardroute.sessions.turns import AsyncTurn, Turn

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_BYTES",
    "Action",
    "AppliedTurn",
    "AsyncTurn",
    "EtcdSessionStore",
    "FoldPolicy",
    "InMemorySessionStore",
    "JsonCodec",
    "LogPosition",
    "MigrationResult",
    "Migrator",
    "OverrideStore",
    "OwnershipDecision",
    "RedisOptions",
    "RedisSessionStore",
    "Refused",
    "SessionCodec",
    "SessionHost",
    "SessionStore",
    "SessionSummary",
    "StoredState",
    "Turn",
    "TurnMemory",
    "decide",
    "decode_envelope",
    "encode_envelope",
    "next_override",
]
