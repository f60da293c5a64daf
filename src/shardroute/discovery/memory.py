"""In-memory topology source: the embedded default for tests and single-process use.

It keeps a small key/value store with the etcd key schema and sends every write
through the same pure functions as :class:`EtcdTopologySource`, so records behave
exactly as they do in etcd (JSON values, malformed ones skipped and counted).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from shardroute.discovery.changes import KeyChange, apply_changes
from shardroute.discovery.keys import KeySchema
from shardroute.discovery.records import encode_load, encode_shard
from shardroute.discovery.source import HolderSource, SnapshotHolder
from shardroute.model import LoadReport, Shard, Topology

__all__ = ["InMemoryTopologySource"]


class InMemoryTopologySource(HolderSource):
    """A :class:`~shardroute.discovery.source.TopologySource` with no etcd.

    Writes (``put_shard``, ``put`` …) publish a new snapshot before they return, each
    at the next revision. It is always live: ``staleness()`` is 0.0.
    """

    def __init__(self, service: str, shards: list[Shard] | None = None) -> None:
        self._schema = KeySchema(service)
        self._holder = SnapshotHolder(Topology(service=service))
        self._write_lock = threading.Lock()
        self._revision = 0
        for shard in shards or ():
            self.put_shard(shard)

    def start(self) -> None:
        """Nothing to load: the source is ready when constructed."""

    def close(self) -> None:
        """Nothing to release."""

    # -- writes -------------------------------------------------------------------

    def put(self, key: str, value: bytes | None) -> Topology:
        """Write (or, with None, delete) a raw value under the service's key schema."""
        with self._write_lock:
            self._revision += 1
            current = self._holder.current()
            topology, errors = apply_changes(
                current, self._schema, [KeyChange(key, value, self._revision)]
            )
            self._holder.count_malformed(errors, current.malformed)
            self._holder.publish(topology)
            return topology

    def put_shard(self, shard: Shard) -> Topology:
        """Register or update a shard."""
        return self.put(self._schema.shard(shard.id), encode_shard(shard))

    def remove_shard(self, shard_id: str) -> Topology:
        """Remove a shard and its load report."""
        self.put(self._schema.load(shard_id), None)
        return self.put(self._schema.shard(shard_id), None)

    def put_load(self, shard_id: str, report: LoadReport) -> Topology:
        """Publish a shard's load report. A report without ``ts`` (0) is stamped with
        the time now, as a shard stamps the reports it measures: clients stop counting
        a report once it is older than ``RoutingPolicy.max_report_age_s``."""
        if report.ts == 0:
            report = replace(report, ts=time.time())
        return self.put(self._schema.load(shard_id), encode_load(report))

    def set_config(self, config: Mapping[str, Any] | None) -> Topology:
        """Set (or with None, remove) the routing configuration."""
        value = None if config is None else json.dumps(dict(config)).encode()
        return self.put(self._schema.config, value)
