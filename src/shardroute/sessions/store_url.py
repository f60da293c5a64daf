"""Choosing a session store by name or URL (``ShardServer(session_store=...)``, the demo's
``--store``): docs/operations.md, "Choosing a session store".

- ``"etcd"`` (or None): the :class:`~shardroute.sessions.EtcdSessionStore` on the
  shard's etcd, the default; ``"memory"``: an
  :class:`~shardroute.sessions.InMemorySessionStore` (one process only);
- ``redis://``, ``rediss://``, ``redis+cluster://``, ``rediss+cluster://`` URLs: a
  :class:`~shardroute.sessions.RedisSessionStore` (the ``redis`` extra).
"""

from __future__ import annotations

from typing import Any

from shardroute.errors import ConfigError
from shardroute.sessions.envelope import FoldPolicy
from shardroute.sessions.redis_options import RedisOptions
from shardroute.sessions.store import InMemorySessionStore, SessionStore

__all__ = ["check_store_choice", "open_session_store"]

_NAMES = ("etcd", "memory")


def check_store_choice(choice: Any) -> Any:
    """``choice`` as given when it is a store object, None, a store name or a valid URL;
    :class:`~shardroute.errors.ConfigError` for any other string (no I/O)."""
    if isinstance(choice, str) and choice not in _NAMES:
        if "://" not in choice:
            raise ConfigError(
                f"unknown session store {choice!r}: expected 'etcd', 'memory', a "
                "redis://, rediss:// or redis+cluster:// URL, or a SessionStore object"
            )
        RedisOptions.from_url(choice)
    return choice


def open_session_store(
    choice: str,
    *,
    service: str,
    ttl_s: float | None = None,
    fold: FoldPolicy | None = None,
) -> SessionStore | None:
    """The store a name or URL chooses, or None for ``"etcd"`` (the caller makes the
    default etcd store on its own etcd client). No I/O: stores connect on first use."""
    check_store_choice(choice)
    if choice == "etcd":
        return None
    if choice == "memory":
        return InMemorySessionStore(ttl_s=ttl_s, fold=fold)
    from shardroute.sessions.redis_store import RedisSessionStore

    return RedisSessionStore(choice, service, ttl_s=ttl_s, fold=fold)
