"""The client's own cost per routed call, without and with the OpenTelemetry SDK.

Routed unary calls on no-op channels (no network: only the client's work), counted in
CPU time of this process (``time.process_time``: other processes' load does not count,
so the figure is stable on a busy machine), best of 7 rounds:

- ``plain_us``: no SDK configured (the API's proxies): the client's plain path;
- ``otel_us``: the same client with the SDK (a ``TracerProvider`` with a
  ``SimpleSpanProcessor`` into an in-memory exporter, a ``MeterProvider`` with an
  in-memory reader) given through ``Telemetry``: a client span, trace context in the
  metadata, the duration histogram and the decision counter per call;
- ``otel_ratio``: ``otel_us / plain_us``.

The goal of issue 11 is about ``plain_us`` across commits (the telemetry check must add
≤ 0.3 µs): run this file from both checkouts, alternating, and compare the minima
(docs/benchmarks.md). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from e2e_bench import SESSIONS, EchoStub, _NoopChannel

from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.model import Shard
from shardroute.transport import ChannelPool

SHARDS = [Shard(f"s{i}", f"127.0.0.1:{5000 + i}") for i in range(2)]


def per_call_us(client: ShardClient, calls: int, before_round: Any = None) -> float:
    """Best of 7 rounds of ``calls`` routed calls, CPU microseconds per call."""
    client._core.channels = ChannelPool(lambda shard: _NoopChannel(), lambda ch: None)
    echo = client.stub(EchoStub).Echo
    for i in range(1000):
        echo(b"x", session_key=SESSIONS[i % 64])
    best = float("inf")
    for _ in range(7):
        if before_round is not None:
            before_round()
        start = time.process_time()
        for i in range(calls):
            echo(b"x", session_key=SESSIONS[i % 64])
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per plain round")
    args = parser.parse_args()
    with ShardClient(InMemoryTopologySource("bench", SHARDS)) as plain:
        plain_us = per_call_us(plain, args.calls)
    result: dict[str, Any] = {"plain_us": round(plain_us, 2), "otel_us": None, "otel_ratio": None}
    try:
        from shardroute.testing.otel import OtelCapture
    except ImportError:  # no SDK installed: the plain figure only
        print(json.dumps(result), flush=True)
        return
    capture = OtelCapture()
    with ShardClient(InMemoryTopologySource("bench", SHARDS), telemetry=capture.telemetry()) as c:
        otel_us = per_call_us(c, max(1000, args.calls // 10), capture.exporter.clear)
    capture.shutdown()
    result.update(otel_us=round(otel_us, 1), otel_ratio=round(otel_us / plain_us, 1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
