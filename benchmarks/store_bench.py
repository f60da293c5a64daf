"""Session store: bytes written per checkpoint as a conversation grows (issue 9), and the
etcd and Redis stores side by side (issue 15).

Starts its own etcd and its own redis-server. One conversation of ``--turns`` turns, each
adding ``--turn-bytes`` of JSON (the chat codec's shape: a list of turns), is checkpointed
turn by turn through ``EtcdSessionStore.checkpoint`` (a turn record, folded into a
snapshot by the default ``FoldPolicy``); a second conversation writes its whole state
every turn (``EtcdSessionStore.save``), the way checkpoints worked before: the baseline,
same run.

Then, for states of 1 KB, 10 KB, 100 KB and 1 MB, each store (``EtcdSessionStore``,
``RedisSessionStore``) in turn: ``get`` (``load``), ``cas`` (``save`` with the expected
version: a compare-and-set of the whole state, what a fold or an import writes) and
``turn`` (``checkpoint`` of one more 1 KB turn on a state of that size: a turn record),
p50 in milliseconds over ``--repeats`` calls each, interleaved store by store.

Prints one JSON line:

    {"turns", "turn_bytes", "bytes_turn_1", "bytes_turn_N", "ratio_N_to_1",
     "mean_bytes_per_turn", "amortized_ratio", "whole_bytes_turn_N", "whole_ratio_N_to_1",
     "checkpoint_ms_p50_turn_N", "whole_ms_p50_turn_N", "total_mb", "whole_total_mb",
     "stores": {"etcd"|"redis": {"1KB"|...: {"get_ms_p50", "cas_ms_p50", "turn_ms_p50"}}},
     "redis_to_etcd_cas_10KB", "redis_to_etcd_get_10KB", "redis_to_etcd_turn_10KB"}

Goals: ``ratio_N_to_1`` <= 2 at N = 200 (the whole-state baseline is ~N);
``redis_to_etcd_cas_10KB`` <= 0.5 (a 10 KB checkpoint on Redis at most half etcd's p50).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.sessions import (
    EtcdSessionStore,
    LogPosition,
    RedisSessionStore,
    SessionStore,
    StoredState,
)
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.redis import RedisServer

SIZES = {"1KB": 1024, "10KB": 10 * 1024, "100KB": 100 * 1024, "1MB": 1000 * 1024}


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def compare_stores(stores: dict[str, SessionStore], repeats: int) -> dict[str, Any]:
    """get / cas / turn p50s per state size and store, the stores interleaved call by
    call so both see the same machine."""
    result: dict[str, dict[str, dict[str, float]]] = {name: {} for name in stores}
    for label, size in SIZES.items():
        times = {name: {"get": [], "cas": [], "turn": []} for name in stores}
        count = max(5, repeats if size <= 10 * 1024 else repeats // (size // (10 * 1024)))
        data = json.dumps([["p" * 16, "r" * (size - 30)]], separators=(",", ":")).encode()
        grown = data[:-1] + b',["p","' + b"r" * 1000 + b'"]]'
        versions, current = {}, {}
        for name, store in stores.items():
            versions[name] = store.save(f"size-{label}", data, owner="a", expected_version=0)
            current[name] = data
        for i in range(count):
            for name, store in stores.items():
                key = f"size-{label}"
                started = time.perf_counter()
                loaded = store.load(key)
                times[name]["get"].append(time.perf_counter() - started)
                assert loaded is not None and loaded.data == current[name]
                started = time.perf_counter()
                versions[name] = store.save(key, data, owner="a", expected_version=versions[name])
                times[name]["cas"].append(time.perf_counter() - started)
                base = StoredState(data, versions[name], "a", LogPosition(snapshot_bytes=len(data)))
                started = time.perf_counter()
                turned = store.checkpoint(key, grown, owner="a", previous=base)
                times[name]["turn"].append(time.perf_counter() - started)
                versions[name], current[name] = turned.version, grown
                if i == 0:
                    assert store.load(key) == turned
        for name in stores:
            result[name][label] = {f"{op}_ms_p50": p50_ms(t) for op, t in times[name].items()}
    return result


def conversation(turns: int, turn_bytes: int) -> list[bytes]:
    """The encoded state after each turn: a JSON list of [prompt, reply] pairs."""
    pair = ["p" * 16, "r" * (turn_bytes - 24)]
    states, history = [], []
    for _ in range(turns):
        history.append(pair)
        states.append(json.dumps(history, separators=(",", ":")).encode())
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--turn-bytes", type=int, default=1024)
    parser.add_argument("--conversations", type=int, default=5, help="repeats, for the p50s")
    parser.add_argument(
        "--repeats", type=int, default=100, help="calls per size and store (1 MB: a tenth)"
    )
    args = parser.parse_args()
    states = conversation(args.turns, args.turn_bytes)
    last = args.turns - 1

    with EtcdServer() as server, RedisServer() as redis_server:
        etcd = EtcdClient(EtcdOptions((server.endpoint,)))
        redis_store = RedisSessionStore(redis_server.url, "bench")
        stores = compare_stores(
            {"etcd": EtcdSessionStore(etcd, "bench-sizes"), "redis": redis_store}, args.repeats
        )
        redis_store.close()
        log_store = EtcdSessionStore(etcd, "bench")
        whole_store = EtcdSessionStore(etcd, "bench-whole")
        per_turn: list[list[int]] = []
        whole_per_turn: list[list[int]] = []
        log_ms: list[float] = []
        whole_ms: list[float] = []
        for c in range(args.conversations):
            previous: StoredState | None = None
            version = 0
            sizes, whole_sizes = [], []
            for n, data in enumerate(states):
                before = log_store.bytes_written
                started = time.perf_counter()
                previous = log_store.checkpoint(f"c{c}", data, owner="a", previous=previous)
                if n == last:
                    log_ms.append((time.perf_counter() - started) * 1000)
                sizes.append(log_store.bytes_written - before)

                before = whole_store.bytes_written
                started = time.perf_counter()
                version = whole_store.save(f"c{c}", data, owner="a", expected_version=version)
                if n == last:
                    whole_ms.append((time.perf_counter() - started) * 1000)
                whole_sizes.append(whole_store.bytes_written - before)
            loaded = log_store.load(f"c{c}")
            assert loaded is not None and loaded.data == states[-1], "read back differs"
            per_turn.append(sizes)
            whole_per_turn.append(whole_sizes)
        etcd.close()

    sizes, whole_sizes = per_turn[0], whole_per_turn[0]
    mean = sum(sizes) / len(sizes)
    print(
        json.dumps(
            {
                "turns": args.turns,
                "turn_bytes": args.turn_bytes,
                "bytes_turn_1": sizes[0],
                "bytes_turn_N": sizes[last],
                "ratio_N_to_1": round(sizes[last] / sizes[0], 3),
                "mean_bytes_per_turn": round(mean),
                "amortized_ratio": round(mean / sizes[0], 3),
                "whole_bytes_turn_N": whole_sizes[last],
                "whole_ratio_N_to_1": round(whole_sizes[last] / whole_sizes[0], 1),
                "checkpoint_ms_p50_turn_N": round(statistics.median(log_ms), 3),
                "whole_ms_p50_turn_N": round(statistics.median(whole_ms), 3),
                "total_mb": round(sum(sizes) / 1e6, 3),
                "whole_total_mb": round(sum(whole_sizes) / 1e6, 3),
                "stores": stores,
                **{
                    f"redis_to_etcd_{op}_10KB": round(
                        stores["redis"]["10KB"][f"{op}_ms_p50"]
                        / stores["etcd"]["10KB"][f"{op}_ms_p50"],
                        3,
                    )
                    for op in ("cas", "get", "turn")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
