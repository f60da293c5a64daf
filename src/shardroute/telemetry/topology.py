"""Topology events: a full resync of a client's topology, and etcd lost or back.

Each is a short span named after the event (``shardroute.topology.resync``,
``shardroute.etcd.unavailable``, ``shardroute.etcd.resumed``) carrying its details as
attributes and one span event, and a count (``shardroute.topology.events`` by
``shardroute.event``). The watch thread logs them on ``shardroute.etcd`` as well.
"""

from __future__ import annotations

from opentelemetry import metrics

from shardroute.telemetry import names
from shardroute.telemetry._setup import Telemetry

__all__ = ["TopologyInstruments", "topology_event"]

_DEFAULT = Telemetry()


class TopologyInstruments:
    """The topology event counter on one meter."""

    def __init__(self, meter: metrics.Meter, _provider: metrics.MeterProvider) -> None:
        self.events = meter.create_counter(
            names.TOPOLOGY_EVENTS,
            unit="{event}",
            description="Topology resyncs and etcd outages seen by clients and shards",
        )


def topology_event(
    event: str,
    service: str,
    revision: int,
    detail: str = "",
    telemetry: Telemetry | None = None,
) -> None:
    """Record ``event`` (one of the ``EVENT_*`` names) of the topology of ``service``
    at ``revision`` (``detail``: the cause, e.g. the error)."""
    telemetry = telemetry if telemetry is not None else _DEFAULT
    if not telemetry.active():
        return
    attributes: dict[str, str | int] = {names.SERVICE: service, names.ETCD_REVISION: revision}
    if detail:
        attributes[names.CAUSE] = detail[:200]
    span = telemetry.tracer.start_span(event, attributes=attributes)
    span.add_event(event, attributes)
    span.end()
    instruments: TopologyInstruments = telemetry.instruments("topology", TopologyInstruments)
    instruments.events.add(1, {names.SERVICE: service, names.EVENT: event})
