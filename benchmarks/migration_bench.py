"""Session migration: time to move a session, and chat turn latency during a drain.

Starts its own etcd and 3 chat shards (subprocesses). Then:

1. ``migrate_ms_p50``: sessions whose state is about 1 KB, 100 KB and 1 MB are moved
   back and forth between shards with ``ShardClient.migrate`` (fence, export, import,
   warm, commit, release); the median per size. ``migrate_ms_p50_redis``: the same on
   3 more shards whose session store is an embedded redis-server (issue 15), moved by a
   ``Migrator`` given that store; the two arms alternate size by size.
2. A drain: ``--drain-sessions`` sessions of about 10 KB are placed on one shard while
   chat traffic runs on other sessions; the turn p99 is measured steady, then while that
   shard drains (SIGTERM: it moves every session away, then exits).

Prints one JSON line:

    {"migrate_ms_p50": {"1KB", "100KB", "1MB"}, "migrate_ms_p50_redis": {...},
     "redis_to_etcd_1MB", "drain_sessions", "drain_s",
     "turn_p99_ms_steady", "turn_p99_ms_during_drain", "p99_ratio"}

Goals: 1 MB moves in <= 20 ms p50 on loopback, on either store; turn p99 during a drain
<= 2x steady.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from shardroute.client import ShardClient
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.sessions import Migrator, RedisSessionStore
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.redis import RedisServer

SIZES = {"1KB": 1_000, "100KB": 100_000, "1MB": 1_000_000}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def chat_turn(client: ShardClient, count: int) -> Callable[[str], str]:
    """A turn on ``client``'s service that returns the shard that answered."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    client.source.wait_for(lambda t: len(t) == count, 10)

    def turn(key: str, prompt: str) -> str:
        request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=2)
        return str(list(chat.Generate(request, session_key=key))[-1].shard_id)

    return turn


def move_once(
    turn: Callable[[str, str], str],
    migrate: Callable[..., Any],
    shard_ids: list[str],
    label: str,
    owner: dict[str, str],
) -> float:
    """Move the ``label`` session to another shard; milliseconds."""
    key = f"move-{label}"
    if key not in owner:
        owner[key] = turn(key, "x" * SIZES[label])
    target = next(s for s in shard_ids if s != owner[key])
    result = migrate(key, target=target)
    owner[key] = target
    return float(result.duration_s * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=12, help="moves per state size")
    parser.add_argument("--drain-sessions", type=int, default=1000)
    parser.add_argument("--session-bytes", type=int, default=10_000)
    parser.add_argument("--traffic-threads", type=int, default=4)
    parser.add_argument("--steady-s", type=float, default=3.0)
    parser.add_argument("--max-moves", type=int, default=4, help="the shards' move cap")
    args = parser.parse_args()

    shard_kwargs = {
        "token_delay_s": 0.0005,
        "capacity": 256,
        "max_concurrent_moves": args.max_moves,
    }
    with ExitStack() as stack:
        etcd = stack.enter_context(EtcdServer())
        redis = stack.enter_context(RedisServer())
        cluster = stack.enter_context(
            ShardCluster(
                etcd.endpoint,
                zones=("zone-a",),
                lease_ttl_s=5,
                drain_grace_s=30,
                shard_kwargs=shard_kwargs,
            )
        )
        cluster.start(3)
        on_redis = stack.enter_context(
            ShardCluster(
                etcd.endpoint,
                service="chat-redis",
                zones=("zone-a",),
                lease_ttl_s=5,
                shard_kwargs={**shard_kwargs, "session_store": redis.url},
            )
        )
        on_redis.start(3)
        client = ShardClient.connect(etcd.endpoint, "chat", timeout=60)
        turn = chat_turn(client, 3)
        shard_ids = sorted(client.source.current().shards)
        redis_client = stack.enter_context(ShardClient.connect(etcd.endpoint, "chat-redis"))
        redis_turn = chat_turn(redis_client, 3)
        redis_ids = sorted(redis_client.source.current().shards)
        store = RedisSessionStore(redis.url, "chat-redis")
        stack.callback(store.close)
        source = redis_client.source
        redis_mover = stack.enter_context(
            Migrator(EtcdClient(source.options), "chat-redis", source, store=store, close_etcd=True)
        )

        # 1. moves by state size, the two stores alternating
        times: dict[str, dict[str, list[float]]] = {"etcd": {}, "redis": {}}
        owners: dict[str, dict[str, str]] = {"etcd": {}, "redis": {}}
        for label in SIZES:
            for _ in range(args.moves):
                times["etcd"].setdefault(label, []).append(
                    move_once(turn, client.migrate, shard_ids, label, owners["etcd"])
                )
                times["redis"].setdefault(label, []).append(
                    move_once(redis_turn, redis_mover.migrate, redis_ids, label, owners["redis"])
                )
        migrate_ms = {k: round(statistics.median(v), 2) for k, v in times["etcd"].items()}
        migrate_redis = {k: round(statistics.median(v), 2) for k, v in times["redis"].items()}
        print(f"moves: etcd {migrate_ms}, redis {migrate_redis}", file=sys.stderr)

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
                "migrate_ms_p50_redis": migrate_redis,
                "redis_to_etcd_1MB": round(migrate_redis["1MB"] / migrate_ms["1MB"], 3),
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
