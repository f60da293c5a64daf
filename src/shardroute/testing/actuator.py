"""An autoscaler actuator over local shard processes (:class:`ShardCluster`), for tests,
the demo and trying the autoscaler on one machine.

``add_shard`` starts one more shard process in the zone, with the scaling labels of its
capacity class (``capacity_class``, ``cost_per_hour``); ``drain_shard`` sends it SIGTERM:
a graceful drain that moves its sessions to other shards, then deregisters and exits. It
never kills a shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from shardroute.errors import UnknownShard
from shardroute.scaling.signals import CAPACITY_CLASS_LABEL, COST_LABEL, CapacityClass
from shardroute.testing.cluster import ShardCluster

__all__ = ["DEFAULT_COSTS", "LocalActuator"]

DEFAULT_COSTS: Mapping[CapacityClass, float] = MappingProxyType(
    {CapacityClass.RESERVED: 0.6, CapacityClass.ON_DEMAND: 1.0, CapacityClass.SPOT: 0.35}
)
"""Cost per hour by capacity class, written on the shards this actuator starts."""


class LocalActuator:
    """Starts and drains shard processes of a :class:`ShardCluster`.

    Args:
        cluster: the cluster (its class, service and etcd).
        costs: cost per hour by capacity class.
        shard_kwargs: extra constructor arguments of every shard started.

    ``added`` and ``drained`` list the shard ids, in order. Thread contract: one call at a
    time (the autoscaler's thread); the cluster is not thread-safe.
    """

    def __init__(
        self,
        cluster: ShardCluster,
        *,
        costs: Mapping[CapacityClass, float] = DEFAULT_COSTS,
        shard_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.costs = dict(costs)
        self.shard_kwargs = dict(shard_kwargs or {})
        self.added: list[str] = []
        self.drained: list[str] = []

    def add_shard(self, zone: str, capacity_class: CapacityClass) -> str:
        """Start a shard in ``zone`` and wait until it is registered; its id."""
        labels = {
            CAPACITY_CLASS_LABEL: capacity_class.value,
            COST_LABEL: f"{self.costs.get(capacity_class, 1.0):g}",
        }
        shard_id = self.cluster.add(zone=zone or None, labels=labels, **self.shard_kwargs)
        self.added.append(shard_id)
        return shard_id

    def drain_shard(self, shard_id: str) -> None:
        """SIGTERM the shard (graceful drain with session moves); returns at once.
        :class:`UnknownShard` when no process of the cluster runs under that id."""
        if shard_id not in self.cluster.shards:
            raise UnknownShard(shard_id)
        self.cluster.drain(shard_id, wait=False)
        self.drained.append(shard_id)
