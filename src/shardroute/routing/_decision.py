"""What the router decided, and why."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shardroute.model import Shard

__all__ = ["Decision", "Reason"]


class Reason(enum.StrEnum):
    """Why a decision chose its shard (a label for telemetry)."""

    AFFINITY = "affinity"
    """The session's home shard (first on the ring in the caller's nearest tier)."""
    MEMO = "memo"
    """The shard the affinity memo pinned the session to (earlier spill, redirect, move)."""
    OVERRIDE = "override"
    """The shard the session's override in etcd names (a client that follows overrides:
    ``connect(..., follow_overrides=True)``), the owner every shard redirects to."""
    SPILL = "spill"
    """The home was full (bounded load or priority ceiling): next candidate in the zone."""
    ZONE_FALLBACK = "zone_fallback"
    """Every candidate in the nearest tier was full or unavailable: crossed zone/region."""
    FAILOVER = "failover"
    """The home was down, draining or excluded by the caller: next candidate."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to send one request.

    Attributes:
        shard: the shard to call.
        fallbacks: shards to try next, in order, if the call to ``shard`` fails before
            reaching it: candidates in the caller's zone in probe order, then its
            region, then the rest; only shards that are active and not excluded; at
            most ``RoutingPolicy.max_fallbacks``. They are not load-checked: the
            transport takes the next entry.
        reason: why ``shard`` was chosen.
        home: the session's home for this caller (whatever its state or load).
        home_at_ceiling: True when ``home`` was passed over because its load was at the
            ceiling of the request's priority class (the reason is then ``spill`` or
            ``zone_fallback``); False when it was passed over for the balance bound, was
            unavailable, or was chosen. Clients count these decisions
            (``CallStats`` key ``at_ceiling``): a scaling signal.
    """

    shard: Shard
    fallbacks: tuple[Shard, ...]
    reason: Reason
    home: Shard
    home_at_ceiling: bool = False

    @property
    def candidates(self) -> tuple[Shard, ...]:
        """``shard`` followed by ``fallbacks``: the whole failover plan."""
        return (self.shard, *self.fallbacks)
