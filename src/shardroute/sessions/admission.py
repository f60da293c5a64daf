"""The balance bound checked by the shard for a new session (``routing.shard_bound``).

Every client checks bounded loads on its own view: the snapshot's load reports and its
own calls. Many clients placing sessions between two reports all see room on the same
shard, so shards end up over the bound (max/avg 1.28-1.30 at c = 1.25 in the scale
simulation). The shard is the one place that knows its load exactly. With
``shard_bound`` on, a shard that receives a session with nothing stored and no override
checks the bound on its exact load (the reports of the others, its own count) and, when
over it, names the shard its own router picks from where it stands (its zone first;
itself excluded): the session host redirects the call there before anything runs,
writing nothing; that shard takes it without checking again and writes the override
naming itself at the first save (docs/routing.md, "The bound at the shard").

Pure apart from reading the shard's in-flight count: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from shardroute.errors import ConfigError, NoShardAvailable, Overloaded
from shardroute.model import Topology
from shardroute.routing import Router, RoutingPolicy

__all__ = ["Admission"]

_SAFE = 1.0 - 1e-9  # as the router's bound: float rounding never lets a shard past it
_UNSET = object()


class Admission:
    """Decides where a new session goes when this shard is over its balance bound.

    Args:
        shard_id: this shard.
        load: this shard's exact load now (calls in flight and queued), the call
            asking included.
    """

    def __init__(self, shard_id: str, load: Callable[[], int]) -> None:
        self.shard_id = shard_id
        self._load = load
        self._router = Router()  # its ring is built only while shard_bound is on
        self._switched: tuple[object, bool] = (_UNSET, False)  # (config, shard_bound)

    def target(self, session_key: str, topology: Topology) -> str | None:
        """The shard a new session should go to instead of this one, or None to take it.

        None unless the service's routing config sets ``shard_bound``, this shard takes
        new sessions, holds at least its spill floor, and is full by the router's test
        on its exact load (``load + 1 > ceil(c x its fair share of the total + 1)``, the
        total being the others' reports plus its exact load). Then: the router's choice
        with this shard excluded, or None when no other shard may take it (it stays).
        """
        me = topology.shards.get(self.shard_id)
        if not self._switch(topology) or me is None:
            return None
        router = self._router
        router.prepare(topology, zone=me.zone or None, region=me.region or None)  # if new
        # the reported load of each shard that takes sessions, as the router counts it
        basis = router.basis(topology)
        if self.shard_id not in basis:
            return None  # this shard takes no new sessions (draining, weight 0)
        policy = router.policy
        own = max(0, self._load() - 1)  # the call asking is not placed yet
        if own < math.floor(policy.spill_floor * me.capacity + 1e-9):
            return None
        total = own + sum(basis.values()) - basis[self.shard_id]
        weight = math.fsum(topology.shards[s].weight for s in basis)
        if own < policy.balance_factor * (total + 1) * me.weight / weight * _SAFE:
            return None  # the router's test: load + 1 <= ceil(c x fair share)
        try:
            # from where this shard stands: its zone first, as a client there would
            chosen = router.route(
                session_key,
                topology,
                zone=me.zone or None,
                region=me.region or None,
                excluded=(self.shard_id,),
            ).shard.id
        except (NoShardAvailable, Overloaded):
            return None
        return chosen if chosen != self.shard_id else None

    def topology_changed(self, topology: Topology) -> None:
        """Build the ring and this shard's candidate order for ``topology`` now, while
        ``shard_bound`` is on: subscribe it to the shard's topology source, so that no
        call waits for a ring build (as a client's router is prepared)."""
        me = topology.shards.get(self.shard_id)
        if self._switch(topology) and me is not None:
            self._router.prepare(topology, zone=me.zone or None, region=me.region or None)

    def _switch(self, topology: Topology) -> bool:
        """Whether the service's routing config sets ``shard_bound`` (read once per
        config; a config the router rejects turns the check off, as clients keep theirs)."""
        config, on = self._switched  # one tuple: two threads may read it (no torn pair)
        if config is not topology.config:
            try:
                on = RoutingPolicy.from_config(topology.config).shard_bound
            except ConfigError:
                on = False
            self._switched = (topology.config, on)
        return on
