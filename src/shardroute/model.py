"""Immutable description of a sharded service: shards, their load, the whole topology.

Everything here is a frozen value. A change never mutates a snapshot: it builds a new
one (see :mod:`shardroute.discovery.changes`), and the holder swaps one reference, so
readers never lock.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "EMPTY_MAPPING",
    "LOAD_REPORT_HEARTBEAT_S",
    "LoadReport",
    "Override",
    "Shard",
    "ShardState",
    "Topology",
]

EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})


LOAD_REPORT_HEARTBEAT_S = 10.0
"""The longest a live shard goes without writing its load report to etcd (it writes
sooner when its load changes notably): the report interval clients age reports by."""


def _empty() -> Mapping[str, Any]:
    return EMPTY_MAPPING


class ShardState(enum.StrEnum):
    """Lifecycle state of a shard as written in its etcd record."""

    ACTIVE = "active"
    """Takes new sessions and serves existing ones."""
    DRAINING = "draining"
    """Serves the sessions it holds until they move; takes no new sessions."""
    DOWN = "down"
    """Takes nothing. Routers skip it."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The load a shard published: etcd ``load/<shard_id>`` or trailing metadata.

    ``ts`` is the unix time the shard measured it (seconds). ``calls_total`` counts the
    user calls the shard started since it started (0 from shards that do not report it):
    the difference between two reports over their ``ts`` is the shard's request rate,
    which the autoscaler forecasts (:mod:`shardroute.scaling`).
    """

    inflight: int = 0
    queue_depth: int = 0
    sessions: int = 0
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    ts: float = 0.0
    calls_total: int = 0

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the shard measured this report (never negative)."""
        return max(0.0, (time.time() if now is None else now) - self.ts)


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard of a service, as registered under ``shards/<id>`` in etcd."""

    id: str
    address: str
    zone: str = ""
    region: str = ""
    weight: float = 1.0
    capacity: int = 64
    state: ShardState = ShardState.ACTIVE
    labels: Mapping[str, str] = field(default_factory=_empty, hash=False)
    schema: int = 1
    lease: int = 0
    """The etcd lease id the shard registered under (0: unknown). Movers attach a
    session override to its owner's lease, so the override dies with the owner."""
    tls: bool = False
    """Whether the shard serves TLS (docs/security.md): a client with TLS refuses to
    send in plaintext to a shard that does not."""

    @property
    def available(self) -> bool:
        """True when the shard may take new sessions (state ``active``)."""
        return self.state is ShardState.ACTIVE


@dataclass(frozen=True, slots=True)
class Override:
    """Where a session lives when it is not where routing alone would put it
    (``sessions/<session_key>`` in etcd; docs/migration.md).

    ``epoch`` grows by one on every change (the fence of migrations); ``moving_to`` is
    set while a migration to that shard is in progress; ``version`` is the etcd
    revision of the value (0 when not read from etcd).
    """

    owner: str
    epoch: int
    moving_to: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True)
class Topology:
    """A consistent snapshot of one service at one etcd revision.

    ``shards`` and ``loads`` are read-only mappings keyed by shard id, ``shards``
    sorted by id. ``shards_revision`` changes only when a shard record changes
    (not on load reports), so derived structures such as the hash ring can be cached
    on it. ``malformed`` names the keys currently skipped because their value is
    invalid. ``config`` is the parsed JSON of the service's ``config`` key, or None.
    """

    service: str
    revision: int = 0
    shards: Mapping[str, Shard] = field(default_factory=_empty, hash=False)
    loads: Mapping[str, LoadReport] = field(default_factory=_empty, hash=False)
    config: Mapping[str, Any] | None = field(default=None, hash=False)
    shards_revision: int = 0
    malformed: frozenset[str] = frozenset()
    overrides: Mapping[str, Override] = field(default_factory=_empty, hash=False)
    """Session overrides by session key; filled only by sources built with
    ``include_sessions=True`` (shard servers), empty for clients."""

    def shard(self, shard_id: str) -> Shard:
        """The shard with this id, or :class:`~shardroute.errors.UnknownShard`."""
        try:
            return self.shards[shard_id]
        except KeyError:
            from shardroute.errors import UnknownShard

            raise UnknownShard(shard_id) from None

    def load(self, shard_id: str) -> LoadReport | None:
        """The latest load report of a shard, or None if it has not reported."""
        return self.loads.get(shard_id)

    def __len__(self) -> int:
        return len(self.shards)
