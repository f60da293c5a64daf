"""Where a move's time goes: one session moved back and forth between 2 chat shards
(subprocesses, etcd store), the median of each step's span (docs/observability.md).

Prints one JSON line: ``{"state_bytes", "moves", "step_ms_p50": {fence, export, import,
warm, commit, release, migrate}, "total_ms_p50"}``; ``migrate`` is the move's span (fence
to commit), ``total`` what ``Migrator.migrate`` took (with the override read before the
fence, when the mover makes one).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from contextlib import ExitStack

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shardroute.client import ShardClient
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.sessions import Migrator
from shardroute.telemetry import Telemetry
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-bytes", type=int, default=1_000_000)
    parser.add_argument("--moves", type=int, default=40)
    args = parser.parse_args()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ExitStack() as stack:
        etcd = stack.enter_context(EtcdServer())
        shards = {"zones": ("zone-a",), "lease_ttl_s": 5, "shard_kwargs": {"token_delay_s": 5e-4}}
        stack.enter_context(ShardCluster(etcd.endpoint, **shards)).start(2)
        client = stack.enter_context(ShardClient.connect(etcd.endpoint, "chat", timeout=60))
        client.source.wait_for(lambda t: len(t) == 2, 10)
        mover = stack.enter_context(
            Migrator(
                EtcdClient(client.source.options),
                "chat",
                client.source,
                close_etcd=True,
                telemetry=Telemetry(tracer_provider=provider),
            )
        )
        chat = client.stub(chat_pb2_grpc.ChatStub)
        request = chat_pb2.GenerateRequest(prompt="x" * args.state_bytes, max_tokens=2)
        owner = str(list(chat.Generate(request, session_key="k"))[-1].shard_id)
        shard_ids = sorted(client.source.current().shards)
        totals: list[float] = []
        for _ in range(args.moves):
            target = next(s for s in shard_ids if s != owner)
            mover.wait_released("k")
            totals.append(mover.migrate("k", target=target).duration_s * 1000)
            owner = target
        steps: dict[str, list[float]] = defaultdict(list)
        for span in exporter.get_finished_spans():
            assert span.end_time is not None and span.start_time is not None
            steps[span.name.rsplit(".", 1)[-1]].append((span.end_time - span.start_time) / 1e6)
    print(
        json.dumps(
            {
                "state_bytes": args.state_bytes,
                "moves": args.moves,
                "step_ms_p50": {k: round(statistics.median(v), 2) for k, v in steps.items()},
                "total_ms_p50": round(statistics.median(totals), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
