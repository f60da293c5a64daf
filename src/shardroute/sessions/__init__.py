"""Sessions that outlive their shard: the session store and session overrides.

See docs/migration.md. :class:`SessionStore` is the protocol a state backend implements
(:class:`EtcdSessionStore` by default, :class:`InMemorySessionStore` for tests);
:class:`OverrideStore` reads and compare-and-swaps where a session lives.
"""

from shardroute.sessions.overrides import OverrideStore, next_override
from shardroute.sessions.store import (
    DEFAULT_MAX_BYTES,
    EtcdSessionStore,
    InMemorySessionStore,
    SessionStore,
    StoredState,
    decode_envelope,
    encode_envelope,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EtcdSessionStore",
    "InMemorySessionStore",
    "OverrideStore",
    "SessionStore",
    "StoredState",
    "decode_envelope",
    "encode_envelope",
    "next_override",
]
