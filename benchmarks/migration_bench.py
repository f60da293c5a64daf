"""Session migration: time to move a session, and chat turn latency during a drain.

Starts its own etcd and 3 chat shards (subprocesses). Then:

1. ``migrate_ms_p50``: sessions whose state is about 1 KB, 100 KB and 1 MB are moved
   back and forth between shards with ``ShardClient.migrate`` (fence, export, import,
   warm, commit, release); the median per size.
2. A drain: ``--drain-sessions`` sessions of about 10 KB are placed on one shard while
   chat traffic runs on other sessions; the turn p99 is measured steady, then while that
   shard drains (SIGTERM: it moves every session away, then exits).

Prints one JSON line:

    {"migrate_ms_p50": {"1KB", "100KB", "1MB"}, "drain_sessions", "drain_s",
     "turn_p99_ms_steady", "turn_p99_ms_during_drain", "p99_ratio"}

Goals: 1 MB moves in <= 20 ms p50 on loopback; turn p99 during a drain <= 2x steady.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer

SIZES = {"1KB": 1_000, "100KB": 100_000, "1MB": 1_000_000}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=12, help="moves per state size")
    parser.add_argument("--drain-sessions", type=int, default=1000)
    parser.add_argument("--session-bytes", type=int, default=10_000)
    parser.add_argument("--traffic-threads", type=int, default=4)
    parser.add_argument("--steady-s", type=float, default=3.0)
    parser.add_argument("--max-moves", type=int, default=4, help="the shards' move cap")
    args = parser.parse_args()

    with (
        EtcdServer() as etcd,
        ShardCluster(
            etcd.endpoint,
            zones=("zone-a",),
            lease_ttl_s=5,
            drain_grace_s=30,
            shard_kwargs={
                "token_delay_s": 0.0005,
                "capacity": 256,
                "max_concurrent_moves": args.max_moves,
            },
        ) as cluster,
    ):
        cluster.start(3)
        client = ShardClient.connect(etcd.endpoint, "chat", timeout=60)
        client.source.wait_for(lambda t: len(t) == 3, 10)
        chat = client.stub(chat_pb2_grpc.ChatStub)
        shard_ids = sorted(client.source.current().shards)

        def turn(key: str, prompt: str) -> str:
            request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=2)
            return list(chat.Generate(request, session_key=key))[-1].shard_id

        # 1. moves by state size
        migrate_ms: dict[str, float] = {}
        for label, size in SIZES.items():
            key = f"move-{label}"
            owner = turn(key, "x" * size)
            times = []
            for _ in range(args.moves):
                target = next(s for s in shard_ids if s != owner)
                result = client.migrate(key, target=target)
                times.append(result.duration_s * 1000)
                owner = target
            migrate_ms[label] = round(statistics.median(times), 2)
        print(f"moves: {migrate_ms}", file=sys.stderr)

        # 2. a drain under traffic
        victim, others = shard_ids[0], shard_ids[1:]
        keys = [f"drain-{n}" for n in range(args.drain_sessions)]
        prompt = "y" * args.session_bytes
        for key in keys:
            client.router.remember(key, victim)
        with ThreadPoolExecutor(8) as pool:
            placed = list(pool.map(lambda k: turn(k, prompt), keys))
        assert all(p == victim for p in placed), "sessions must start on the drained shard"
        print(f"placed {len(keys)} sessions on {victim}", file=sys.stderr)

        phase = ["steady"]
        latencies: dict[str, list[float]] = {"steady": [], "drain": []}
        stop = threading.Event()
        errors: list[BaseException] = []

        def traffic(n: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"talk-{n}-{i % 50}"
                client.router.remember(key, others[i % len(others)])
                started = time.perf_counter()
                try:
                    turn(key, "hello")
                except Exception as exc:
                    errors.append(exc)
                latencies[phase[0]].append((time.perf_counter() - started) * 1000)
                i += 1

        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(args.traffic_threads)]
        for thread in threads:
            thread.start()
        stop.wait(args.steady_s)
        phase[0] = "drain"
        drain_started = time.monotonic()
        cluster.drain(victim, timeout=120)
        drain_s = time.monotonic() - drain_started
        stop.set()
        for thread in threads:
            thread.join(30)
        client.close()

    steady, during = p99(latencies["steady"]), p99(latencies["drain"])
    print(
        json.dumps(
            {
                "migrate_ms_p50": migrate_ms,
                "drain_sessions": args.drain_sessions,
                "max_concurrent_moves": args.max_moves,
                "drain_s": round(drain_s, 2),
                "turn_p99_ms_steady": round(steady, 2),
                "turn_p99_ms_during_drain": round(during, 2),
                "p99_ratio": round(during / steady, 2),
                "traffic_errors": len(errors),
                "turns_steady": len(latencies["steady"]),
                "turns_during_drain": len(latencies["drain"]),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
