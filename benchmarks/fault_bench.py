"""Faults: how long until a client stops sending to a SIGSTOPped shard (issue 14).

Starts its own etcd and 3 chat shard processes (the default lease TTL, 10 s, longer
than the hold: the stopped shard stays in every topology). Conversations run
through a client with the default shard channels (HTTP/2 keepalive pings every second,
``transport.channels.KEEPALIVE_OPTIONS``) while the shard holding the first conversation
is SIGSTOPped, held, then resumed (``shardroute.testing.chaos.Stop``). The baseline, same
run, same cluster: a second client whose channels send no keepalive pings (the behaviour
before issue 14), for which only the calls' deadline (``--timeout``) and timeout ejection
(3 timeouts in a row, also new) notice the stopped shard.

Prints one JSON line:

    {"stop_avoided_s", "baseline_avoided_s", "ratio", "stop_failed_turns",
     "baseline_failed_turns", "stop_p99_ms", "baseline_p99_ms", "steady_p99_ms"}

``*_avoided_s``: seconds from SIGSTOP until the client ejected the shard or it left the
client's topology (null: not within the hold). Goal: ``stop_avoided_s`` <= 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shardroute.client import ShardClient
from shardroute.testing.chaos import ChaosEnv, ChaosRunner, FaultResult, Stop
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer

NO_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.ping_timeout_ms", 60_000),
]


def _measure(
    cluster: ShardCluster, etcd: EtcdServer, hold_s: float, timeout: float, **kwargs: Any
) -> FaultResult:
    with ShardClient.connect(etcd.endpoint, "chat", timeout=timeout, **kwargs) as client:
        runner = ChaosRunner(
            ChaosEnv(cluster, etcd, client), sessions=6, turn_timeout_s=timeout, steady_s=1.0
        )
        (result,) = runner.run([Stop(hold_s)])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=8.0, help="seconds a shard stays stopped")
    parser.add_argument("--timeout", type=float, default=3.0, help="each turn's deadline")
    args = parser.parse_args()
    with (
        EtcdServer() as etcd,
        ShardCluster(
            etcd.endpoint, shard_kwargs={"token_delay_s": 0.002}, lease_ttl_s=10
        ) as cluster,
    ):
        cluster.start(3)
        stop = _measure(cluster, etcd, args.hold, args.timeout)
        base = _measure(cluster, etcd, args.hold, args.timeout, channel_options=NO_KEEPALIVE)
    ratio = None
    if stop.avoided_after_s is not None and base.avoided_after_s:
        ratio = round(stop.avoided_after_s / base.avoided_after_s, 3)
    print(
        json.dumps(
            {
                "stop_avoided_s": _r(stop.avoided_after_s),
                "baseline_avoided_s": _r(base.avoided_after_s),
                "ratio": ratio,
                "stop_failed_turns": sum(stop.failed_turns_by_cause.values()),
                "baseline_failed_turns": sum(base.failed_turns_by_cause.values()),
                "stop_p99_ms": round(stop.p99_ms, 1),
                "baseline_p99_ms": round(base.p99_ms, 1),
                "steady_p99_ms": round(stop.steady_p99_ms, 1),
                "hold_s": args.hold,
                "timeout_s": args.timeout,
            }
        )
    )


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    main()
