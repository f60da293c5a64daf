"""Routed (ShardClient) versus direct sync unary calls to the same shard servers.

Starts 2 echo shard servers in subprocesses. In interleaved A/B slices, the same
sessions' calls go either straight to their shard's channel (direct, a plain stub) or
through ShardClient (routing, in-flight accounting, metadata, failover plan). Then the
client's own per-call cost is measured with every channel replaced by a no-op stub.
Prints one JSON line:

    {"direct_p50_us", "routed_p50_us", "p50_ratio", "p99_ratio", "throughput_ratio",
     "client_overhead_us"}

Goals: p50_ratio <= 1.05, client_overhead_us <= 5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.model import Shard
from shardroute.transport import ChannelPool


def _same(data: bytes) -> bytes:
    return data


class EchoStub:
    """Written the way grpcio-tools writes stubs."""

    def __init__(self, channel: Any) -> None:
        self.Echo = channel.unary_unary(
            "/bench.Echo/Echo", request_serializer=_same, response_deserializer=_same
        )


class _NoopChannel:
    def unary_unary(self, path: str, **_: Any) -> Any:
        return lambda request, timeout=None, metadata=None: request


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=40, help="A/B slice pairs")
    parser.add_argument("--calls", type=int, default=250, help="calls per slice")
    args = parser.parse_args()

    server_script = Path(__file__).with_name("_echo_server.py")
    procs = [
        subprocess.Popen(
            [sys.executable, str(server_script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        ports = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        shards = [Shard(f"s{i}", f"127.0.0.1:{port}") for i, port in enumerate(ports)]
        source = InMemoryTopologySource("bench", shards)
        client = ShardClient(source, timeout=10)
        routed = client.stub(EchoStub).Echo
        direct_stubs = {s.id: EchoStub(grpc.insecure_channel(s.address)).Echo for s in shards}
        sessions = [f"conv-{i}" for i in range(64)]
        homes = [direct_stubs[client.route(k).shard.id] for k in sessions]
        payload = b"x" * 64
        for k, stub in zip(sessions, homes, strict=True):  # warm both paths
            stub(payload, timeout=10)
            routed(payload, session_key=k)

        direct_us: list[float] = []
        routed_us: list[float] = []
        direct_time = routed_time = 0.0
        clock = time.perf_counter
        for _ in range(args.slices):
            start = clock()
            for i in range(args.calls):
                t = clock()
                homes[i % 64](payload, timeout=10)
                direct_us.append((clock() - t) * 1e6)
            direct_time += clock() - start
            start = clock()
            for i in range(args.calls):
                t = clock()
                routed(payload, session_key=sessions[i % 64])
                routed_us.append((clock() - t) * 1e6)
            routed_time += clock() - start

        # The client's own cost: the same routed calls on no-op channels.
        client._core.channels = ChannelPool(lambda address: _NoopChannel(), lambda ch: None)
        # Best of 7 rounds, as timeit does: the machine's noise only ever adds time.
        n = 20_000
        for i in range(1000):
            routed(payload, session_key=sessions[i % 64])
        rounds = []
        for _ in range(7):
            start = clock()
            for i in range(n):
                routed(payload, session_key=sessions[i % 64])
            rounds.append((clock() - start) / n * 1e6)
        overhead_us = min(rounds)
        client.close()
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(10)

    direct_p50, routed_p50 = statistics.median(direct_us), statistics.median(routed_us)
    result = {
        "direct_p50_us": round(direct_p50, 1),
        "routed_p50_us": round(routed_p50, 1),
        "p50_ratio": round(routed_p50 / direct_p50, 3),
        "p99_ratio": round(percentile(routed_us, 0.99) / percentile(direct_us, 0.99), 3),
        "throughput_ratio": round(direct_time / routed_time, 3),
        "client_overhead_us": round(overhead_us, 2),
        "calls_each": len(direct_us),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
