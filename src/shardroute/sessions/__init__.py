"""Sessions that outlive their shard: the session store and session overrides.

See docs/migration.md. :class:`SessionStore` is the protocol a state backend implements
(:class:`EtcdSessionStore` by default, :class:`InMemorySessionStore` for tests): a
snapshot plus a log of turn records per session (:mod:`shardroute.sessions.envelope`),
folded by a :class:`FoldPolicy`. :class:`OverrideStore` reads and compare-and-swaps
where a session lives.
"""

from shardroute.sessions.envelope import (
    FoldPolicy,
    LogPosition,
    StoredState,
    decode_envelope,
    encode_envelope,
)
from shardroute.sessions.etcd_store import EtcdSessionStore
from shardroute.sessions.overrides import OverrideStore, next_override
from shardroute.sessions.store import DEFAULT_MAX_BYTES, InMemorySessionStore, SessionStore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EtcdSessionStore",
    "FoldPolicy",
    "InMemorySessionStore",
    "LogPosition",
    "OverrideStore",
    "SessionStore",
    "StoredState",
    "decode_envelope",
    "encode_envelope",
    "next_override",
]
