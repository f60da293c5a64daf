"""Shard telemetry with the real OpenTelemetry SDK, real etcd and real chat shards in
this process (so their spans are captured): client and server spans in one trace,
migration steps, drain, shard metrics, and the Prometheus endpoint over HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from chat_calls import history, turn
from opentelemetry.trace import SpanKind
from shells import KINDS, Shell

from shardroute.client import ShardClient
from shardroute.examples.chat import ChatShard
from shardroute.telemetry import Telemetry, names, serve_prometheus, session_hash
from shardroute.testing.etcd import free_port
from shardroute.testing.otel import OtelCapture
from shardroute.testing.waiting import wait_until

SERVICE = "chat-otel"


@pytest.fixture
def shards(etcd_endpoint: str, otel_capture: OtelCapture) -> Iterator[list[ChatShard]]:
    started = [
        ChatShard(
            shard_id=f"o{i}",
            service=SERVICE,
            etcd=etcd_endpoint,
            telemetry=otel_capture.telemetry(),
            token_delay_s=0,
        ).start()
        for i in range(2)
    ]
    # a drain picks its targets from the draining shard's own view: wait until each
    # shard's watch shows the other (the client's view alone is not enough)
    for shard in started:
        wait_until(lambda s=shard: {"o0", "o1"} <= set(s.topology.shards), 10, "peers")  # type: ignore[union-attr]
    yield started
    for shard in started:
        shard.stop(0)


@pytest.fixture
def client(
    etcd_endpoint: str, shards: list[ChatShard], otel_capture: OtelCapture
) -> Iterator[ShardClient]:
    with ShardClient.connect(etcd_endpoint, SERVICE, telemetry=otel_capture.telemetry()) as c:
        c.source.wait_for(lambda t: len(t.shards) == len(shards), timeout=10)
        yield c


def test_the_shard_span_is_a_child_of_the_client_span(
    client: ShardClient, otel_capture: OtelCapture
) -> None:
    last = turn(client, "conv-a", "hello")
    server_spans = [
        s
        for s in otel_capture.spans("shardroute.examples.chat.v1.Chat/Generate")
        if s.kind is SpanKind.SERVER
    ]
    client_spans = [
        s
        for s in otel_capture.spans("shardroute.examples.chat.v1.Chat/Generate")
        if s.kind is SpanKind.CLIENT
    ]
    assert len(server_spans) == len(client_spans) == 1
    client_span, server_span = client_spans[0], server_spans[0]
    assert server_span.context.trace_id == client_span.context.trace_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    attributes = dict(server_span.attributes or {})
    assert (
        attributes[names.SHARD] == last.shard_id == dict(client_span.attributes or {})[names.SHARD]
    )
    assert attributes[names.RPC_SYSTEM] == "grpc"
    assert attributes[names.RPC_METHOD] == "Generate"
    assert attributes[names.REASON] == "affinity"
    assert attributes[names.SESSION_HASH] == session_hash("conv-a")
    assert names.SESSION_KEY not in attributes
    assert attributes[names.RPC_GRPC_STATUS_CODE] == 0


def test_shard_metrics_count_turns_checkpoints_and_sessions(
    client: ShardClient, otel_capture: OtelCapture
) -> None:
    for i in range(3):
        turn(client, "conv-b", f"p{i}")
    owner = client.route("conv-b").shard.id
    assert otel_capture.value(names.SERVER_DURATION, {names.SHARD: owner}) >= 3
    assert otel_capture.value(names.CHECKPOINT_DURATION, {names.SHARD: owner}) == 3
    (size,) = [
        p for p in otel_capture.points(names.CHECKPOINT_SIZE) if p.attributes[names.SHARD] == owner
    ]
    assert size.count == 3 and size.sum > 0
    assert otel_capture.value(names.SESSIONS, {names.SHARD: owner}) == 1
    assert otel_capture.value(names.INFLIGHT, {names.SHARD: owner}) == 0
    assert otel_capture.value(names.TAKEOVERS, {names.SHARD: owner}) == 1  # a new session
    assert otel_capture.value(names.REVISION, {names.SERVICE: SERVICE}) > 0
    assert otel_capture.value(names.STALENESS, {names.SERVICE: SERVICE}) == 0


def test_a_migration_is_a_span_with_a_child_per_step(
    client: ShardClient, otel_capture: OtelCapture, shards: list[ChatShard]
) -> None:
    turn(client, "conv-c", "hello")
    source = client.route("conv-c").shard.id
    target = next(s.shard_id for s in shards if s.shard_id != source)
    client.migrate("conv-c", target=target)
    (move,) = otel_capture.spans(names.SPAN_MIGRATION)
    attributes = dict(move.attributes or {})
    assert attributes[names.OUTCOME] == "committed"
    assert (attributes[names.SOURCE_SHARD], attributes[names.TARGET_SHARD]) == (source, target)
    steps = [
        s.name.removeprefix(names.SPAN_MIGRATION_STEP)
        for s in otel_capture.spans()
        if s.parent is not None and s.parent.span_id == move.context.span_id
    ]
    assert steps == ["fence", "export", "import", "warm", "commit", "release"]
    labels = {names.SOURCE_SHARD: source, names.TARGET_SHARD: target, names.OUTCOME: "committed"}
    assert otel_capture.value(names.MIGRATIONS, labels) == 1
    assert otel_capture.value(names.MIGRATION_DURATION, labels) == 1
    # the next turn goes to the new owner and the history moved whole
    assert turn(client, "conv-c", "again").shard_id == target
    assert history(client, "conv-c") == ["hello", "again"]


def test_a_drain_is_a_span_over_its_migrations(
    client: ShardClient, otel_capture: OtelCapture, shards: list[ChatShard]
) -> None:
    turn(client, "conv-d", "hello")
    owner = next(s for s in shards if s.shard_id == client.route("conv-d").shard.id)
    owner.drain(5)
    (drain,) = otel_capture.spans(names.SPAN_DRAIN)
    assert dict(drain.attributes or {})[names.SHARD] == owner.shard_id
    (move,) = otel_capture.spans(names.SPAN_MIGRATION)
    assert move.parent is not None and move.parent.span_id == drain.context.span_id
    assert dict(move.attributes or {})[names.OUTCOME] == "committed"


def test_a_redirect_is_sent_and_followed(
    etcd_endpoint: str, client: ShardClient, otel_capture: OtelCapture, shards: list[ChatShard]
) -> None:
    turn(client, "conv-e", "hello")
    source = client.route("conv-e").shard.id
    target = next(s.shard_id for s in shards if s.shard_id != source)
    client.migrate("conv-e", target=target)
    # another client, without the mover's memo, still routes to the old owner
    other_capture = OtelCapture()
    with ShardClient.connect(etcd_endpoint, SERVICE, telemetry=other_capture.telemetry()) as other:
        other.source.wait_for(lambda t: len(t.shards) == len(shards), timeout=10)
        assert turn(other, "conv-e", "from elsewhere").shard_id == target
    # its first call went to the old owner (the session's home), which redirected it
    (span,) = other_capture.spans()
    attributes = dict(span.attributes or {})
    assert (attributes[names.REASON], attributes[names.SHARD]) == ("redirect", target)
    assert attributes[names.HOME] == source and attributes[names.ATTEMPTS] == 2
    assert otel_capture.value(names.REDIRECTS_SENT, {names.SHARD: source}) == 1
    assert other_capture.value(names.REDIRECTS, {names.SHARD: source}) == 1
    other_capture.shutdown()


def test_the_prometheus_endpoint_serves_shardroute_metrics(
    etcd_endpoint: str, shards: list[ChatShard]
) -> None:
    port = free_port()
    provider = serve_prometheus(port, set_global=False)
    with ShardClient.connect(
        etcd_endpoint, SERVICE, telemetry=Telemetry(meter_provider=provider)
    ) as client:
        client.source.wait_for(lambda t: len(t.shards) == len(shards), timeout=10)
        turn(client, "conv-f", "hello")
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            if "shardroute_client_decisions" in text or time.monotonic() > deadline:
                break
    assert "shardroute_client_decisions_total{" in text and 'shardroute_reason="affinity"' in text
    assert "rpc_client_duration_seconds_bucket{" in text
    assert 'le="2e-05"' in text or 'le="2.0e-05"' in text  # the bucket advice reached it
    assert "shardroute_topology_staleness_seconds{" in text
    provider.shutdown()


def test_the_shard_command_serves_metrics(etcd_endpoint: str) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "shardroute.server.run",
        "--class",
        "shardroute.examples.chat:ChatShard",
        "--etcd",
        etcd_endpoint,
        "--service",
        "chat-metrics",
        "--shard-id",
        "m1",
        "--metrics-port",
        str(port),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as shard:
        try:
            assert shard.stdout is not None
            assert shard.stdout.readline().startswith(b"READY ")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        finally:
            shard.kill()
            shard.wait(15)
    for name in ("shardroute_shard_inflight", "shardroute_shard_sessions"):
        assert re.search(name + r'\{[^}]*shardroute_shard="m1"[^}]*\} 0\.0', text), name


@pytest.mark.parametrize("kind", KINDS)
def test_both_shells_make_the_server_span(
    etcd_endpoint: str, otel_capture: OtelCapture, kind: str
) -> None:
    service = f"chat-shell-{kind}"
    with (
        Shell(
            kind,
            shard_id="sh1",
            service=service,
            etcd=etcd_endpoint,
            telemetry=otel_capture.telemetry(),
            token_delay_s=0,
        ).start(),
        ShardClient.connect(etcd_endpoint, service, telemetry=otel_capture.telemetry()) as client,
    ):
        client.source.wait_for(lambda t: "sh1" in t.shards, timeout=10)
        turn(client, "conv-g", "hello")
        history(client, "conv-g")
    by_kind = {
        (span.name.rsplit("/", 1)[1], span.kind): span
        for span in otel_capture.spans()
        if span.name.startswith("shardroute.examples.chat")
    }
    for method in ("Generate", "History"):
        client_span = by_kind[method, SpanKind.CLIENT]
        server_span = by_kind[method, SpanKind.SERVER]
        assert server_span.parent is not None
        assert server_span.parent.span_id == client_span.context.span_id
        assert dict(server_span.attributes or {})[names.SHARD] == "sh1"
    assert otel_capture.value(names.SERVER_DURATION, {names.SHARD: "sh1"}) == 2
