"""Put-to-snapshot latency of EtcdTopologySource against a raw etcd watch callback.

Starts its own etcd. Alternates samples: a put watched by a raw ``etcd3`` watch
callback (the baseline), then a put watched by an EtcdTopologySource (time until the
new snapshot is published to readers). Prints one JSON line:

    {"watch_to_snapshot_ms_p50", "watch_to_snapshot_ms_p99",
     "raw_watch_ms_p50", "raw_watch_ms_p99", "p50_ratio", "samples"}

Goal: p50_ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import etcd3

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.model import Topology
from shardroute.testing.etcd import EtcdServer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=400, help="samples of each kind")
    parser.add_argument("--shards", type=int, default=50, help="shards in the topology")
    args = parser.parse_args()

    with EtcdServer() as server:
        host, port = server.endpoint.split(":")
        raw_client = etcd3.client(host=host, port=int(port))
        schema = KeySchema("bench")
        for i in range(args.shards):
            raw_client.put(schema.shard(f"s{i}"), json.dumps({"address": f"h:{1000 + i}"}))

        raw_seen = threading.Event()
        raw_client.add_watch_prefix_callback("/rawbench/", lambda _resp: raw_seen.set())

        source = EtcdTopologySource(server.endpoint, "bench")
        source.start()
        wanted = [0]
        snap_seen = threading.Event()

        def on_snapshot(topology: Topology) -> None:
            load = topology.loads.get("s0")
            if load is not None and load.sessions == wanted[0]:
                snap_seen.set()

        source.subscribe(on_snapshot)

        raw_ms: list[float] = []
        snap_ms: list[float] = []
        for i in range(1, args.samples + 1):
            raw_seen.clear()
            start = time.perf_counter()
            raw_client.put("/rawbench/k", str(i))
            if not raw_seen.wait(5):
                raise SystemExit("raw watch missed an event")
            raw_ms.append((time.perf_counter() - start) * 1000)

            snap_seen.clear()
            wanted[0] = i
            start = time.perf_counter()
            raw_client.put(schema.load("s0"), json.dumps({"sessions": i}))
            if not snap_seen.wait(5):
                raise SystemExit("topology source missed an event")
            snap_ms.append((time.perf_counter() - start) * 1000)

        source.close()
        raw_client.close()

    result = {
        "watch_to_snapshot_ms_p50": round(statistics.median(snap_ms), 3),
        "watch_to_snapshot_ms_p99": round(percentile(snap_ms, 0.99), 3),
        "raw_watch_ms_p50": round(statistics.median(raw_ms), 3),
        "raw_watch_ms_p99": round(percentile(raw_ms, 0.99), 3),
        "p50_ratio": round(statistics.median(snap_ms) / statistics.median(raw_ms), 3),
        "samples": args.samples,
        "shards": args.shards,
    }
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
