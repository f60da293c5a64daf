"""What the demo runs: :class:`DemoConfig` and its constants."""

from __future__ import annotations

from dataclasses import dataclass

from shardroute.errors import ConfigError
from shardroute.testing.etcd import DEFAULT_QUOTA_BACKEND_BYTES
from shardroute.transport import RetryPolicy

__all__ = ["CLIENT_ZONE", "EXACTLY_ONCE", "SERVICE", "DemoConfig", "MiB"]

SERVICE = "chat"
CLIENT_ZONE = "zone-a"
EXACTLY_ONCE = RetryPolicy(exactly_once=True)
"""The demo's clients send turn ids: a turn whose outcome is unknown is retried under its
id (the chat shards record them with each checkpoint: docs/client.md)."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs."""

    duration_s: float = 20.0
    shards: int = 4
    sessions: int = 200
    workers: int = 8
    max_tokens: int = 8
    kill_at: float = 0.3
    """Share of the duration after which one shard is SIGKILLed."""
    add_at: float = 0.5
    """Share of the duration after which a shard is added."""
    drain_at: float = 0.7
    """Share of the duration after which another shard is drained."""
    seed: int = 7
    follow_overrides: bool = True
    """The client follows the session overrides (``connect(follow_overrides=True)``):
    sessions the kill, the spills and the drain moved go straight to their owner."""
    turns_per_conversation: tuple[int, int] = (5, 40)
    """A conversation lasts this many turns (uniform, inclusive), then the demo ends it
    (``end_session``: its state and override are deleted) and starts a new one."""
    session_ttl_s: float = 120.0
    """Idle conversations expire from the session store after this long."""
    etcd_quota_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    """The embedded etcd's space quota (``--quota-backend-bytes``)."""
    store: str = "etcd"
    """Where conversation state lives: ``"etcd"`` (the embedded etcd) or ``"redis"`` (an
    embedded redis-server started beside it; etcd then keeps only topology, leases and
    overrides)."""

    tls: bool = False
    """Mutual TLS on every gRPC hop, with throwaway certificates (``--tls``)."""
    shard_bound: bool = False
    """The service's routing config sets ``shard_bound`` (``--shard-bound``): shards check
    the balance bound for each new session on their exact load (docs/routing.md)."""

    def __post_init__(self) -> None:
        if self.store not in ("etcd", "redis"):
            raise ConfigError(f"the demo's store is 'etcd' or 'redis', got {self.store!r}")


MiB = 1024 * 1024
