"""Topology events with the real OpenTelemetry SDK and a real etcd behind a fault proxy:
etcd lost, etcd back, and a full resync after compaction each leave a span and a
count."""

from __future__ import annotations

import json

from shardroute.client import ShardClient
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.telemetry import names
from shardroute.testing.faults import TcpProxy
from shardroute.testing.otel import OtelCapture


def record(port: int) -> bytes:
    return json.dumps({"address": f"127.0.0.1:{port}"}).encode()


def test_etcd_outage_return_and_resync_are_recorded(
    etcd_endpoint: str, etcd: EtcdClient, otel_capture: OtelCapture
) -> None:
    capture = otel_capture
    schema = KeySchema("chat-events")
    etcd.put(schema.shard("old"), record(7300))
    with TcpProxy(etcd_endpoint) as proxy:
        source = EtcdTopologySource(
            proxy.endpoint, "chat-events", backoff_max_s=0.2, telemetry=capture.telemetry()
        )
        try:
            source.start()
            proxy.cut()
            source.wait_for(lambda t: source.staleness() > 0, 10)
            etcd.delete(schema.shard("old"))
            etcd.put(schema.shard("new"), record(7301))
            etcd.compact(etcd.revision())  # the source's next revision is gone: resync
            proxy.restore()
            source.wait_for(lambda t: "new" in t.shards and source.staleness() == 0.0, 15)
        finally:
            source.close()
    (lost,) = capture.spans(names.EVENT_ETCD_UNAVAILABLE)
    assert dict(lost.attributes or {})[names.SERVICE] == "chat-events"
    assert [e.name for e in lost.events] == [names.EVENT_ETCD_UNAVAILABLE]
    assert len(capture.spans(names.EVENT_TOPOLOGY_RESYNC)) == source.resyncs == 1
    unavailable = {names.SERVICE: "chat-events", names.EVENT: names.EVENT_ETCD_UNAVAILABLE}
    assert capture.value(names.TOPOLOGY_EVENTS, unavailable) == 1
    resync = {names.SERVICE: "chat-events", names.EVENT: names.EVENT_TOPOLOGY_RESYNC}
    assert capture.value(names.TOPOLOGY_EVENTS, resync) == 1


def test_a_client_reports_staleness_while_etcd_is_cut_and_malformed_records(
    etcd_endpoint: str, etcd: EtcdClient, otel_capture: OtelCapture
) -> None:
    schema = KeySchema("chat-stale")
    etcd.put(schema.shard("ok"), record(7400))
    etcd.put(schema.shard("bad"), b"not json")
    labels = {names.SERVICE: "chat-stale"}
    with (
        TcpProxy(etcd_endpoint) as proxy,
        ShardClient.connect(
            proxy.endpoint,
            "chat-stale",
            etcd_options={"backoff_max_s": 0.2},
            telemetry=otel_capture.telemetry(),
        ) as client,
    ):
        assert otel_capture.value(names.MALFORMED, labels) == 1
        assert otel_capture.value(names.STALENESS, labels) == 0
        assert otel_capture.value(names.REVISION, labels) == client.source.current().revision > 0
        proxy.cut()
        client.source.wait_for(lambda t: client.source.staleness() > 0, 10)
        assert otel_capture.value(names.STALENESS, labels) > 0
        proxy.restore()
        client.source.wait_for(lambda t: client.source.staleness() == 0.0, 15)
        assert otel_capture.value(names.STALENESS, labels) == 0
