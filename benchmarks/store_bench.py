"""Session store: bytes written per checkpoint as a conversation grows (issue 9).

Starts its own etcd. One conversation of ``--turns`` turns, each adding ``--turn-bytes``
of JSON (the chat codec's shape: a list of turns), is checkpointed turn by turn through
``EtcdSessionStore.checkpoint`` (a turn record, folded into a snapshot by the default
``FoldPolicy``); a second conversation writes its whole state every turn
(``EtcdSessionStore.save``), the way checkpoints worked before: the baseline, same run.

Prints one JSON line:

    {"turns", "turn_bytes", "bytes_turn_1", "bytes_turn_N", "ratio_N_to_1",
     "mean_bytes_per_turn", "amortized_ratio", "whole_bytes_turn_N", "whole_ratio_N_to_1",
     "checkpoint_ms_p50_turn_N", "whole_ms_p50_turn_N", "total_mb", "whole_total_mb"}

Goal: ``ratio_N_to_1`` <= 2 at N = 200 (the whole-state baseline is ~N).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.sessions import EtcdSessionStore, StoredState
from shardroute.testing.etcd import EtcdServer


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
    args = parser.parse_args()
    states = conversation(args.turns, args.turn_bytes)
    last = args.turns - 1

    with EtcdServer() as server:
        etcd = EtcdClient(EtcdOptions((server.endpoint,)))
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
            }
        )
    )


if __name__ == "__main__":
    main()
