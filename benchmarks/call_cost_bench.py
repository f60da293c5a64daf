"""Where a routed call's extra time goes, measured in place (after a blocking gRPC call).

    python benchmarks/call_cost_bench.py [--calls 4000]

Two echo shard servers in subprocesses and one set of channels, shared by every arm
(so only the Python around the call differs). The arms take turns call by call, in
rotating order; each prints its p50 and its p50 minus the ``direct`` arm's (µs):

- ``direct``: a plain stub call carrying the session key entry (what a routed call sends);
- ``direct+2 entries``: the same with the memo path's two more entries (reason, shard id);
- ``route+direct``: ``Router.route`` for the key (what the client routes with), then the
  plain call;
- ``hash+direct`` / ``dict get+direct``: the key's xxh3 hash, or one lookup in a dict of
  64 keys, then the plain call;
- ``loop+direct``: a 200-step Python loop that touches almost no memory, then the call;
- ``touch+direct``: reading 200 dicts spread over a list of 20,000, then the call;
- ``routed``: the client's routed call (``ShardClient``, the flat unary path).

``warm_us`` times the added steps alone in a tight loop. Python run right after a
blocking call finds the CPU caches taken by the servers and gRPC: what costs is the
memory a step touches, much more than its bytecode (docs/benchmarks.md). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import grpc
from e2e_bench import PAYLOAD, SESSION_MD, SESSIONS, EchoStub, order, start_servers
from xxhash import xxh3_64_intdigest

from shardroute import metadata
from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.transport import ChannelPool

MEMO_MD = [(*md, (metadata.REASON, "memo"), (metadata.SHARD_ID, "s1")) for md in SESSION_MD]
JUNK = [{"a": i, "b": str(i)} for i in range(20_000)]


def loop(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def touch(n: int) -> int:
    return sum(len(JUNK[i]) for i in range(0, len(JUNK), len(JUNK) // n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args()
    procs, shards = start_servers(2)
    try:
        channels = {s.id: grpc.insecure_channel(s.address) for s in shards}
        client = ShardClient(InMemoryTopologySource("bench", shards), timeout=10)
        client._core.channels = ChannelPool(lambda shard: channels[shard.id], lambda ch: None)
        routed = client.stub(EchoStub).Echo
        stubs = {sid: EchoStub(ch) for sid, ch in channels.items()}
        homes = [stubs[client.route(k).shard.id].Echo for k in SESSIONS]
        route, by_key = client.route, {k: k for k in SESSIONS}

        def direct(i: int, md: Any = SESSION_MD) -> Any:
            return homes[i % 64](PAYLOAD, timeout=10, metadata=md[i % 64])

        def then_direct(step: Callable[[int], object]) -> Callable[[int], object]:
            return lambda i: (step(i), direct(i))

        steps: dict[str, Callable[[int], object]] = {
            "route": lambda i: route(SESSIONS[i % 64]),
            "hash": lambda i: xxh3_64_intdigest(SESSIONS[i % 64].encode()),
            "dict get": lambda i: by_key.get(SESSIONS[i % 64]),
            "loop": lambda i: loop(200),
            "touch": lambda i: touch(200),
        }
        arms: dict[str, Callable[[int], object]] = {
            "direct": direct,
            "direct+2 entries": lambda i: direct(i, MEMO_MD),
            **{f"{name}+direct": then_direct(step) for name, step in steps.items()},
            "routed": lambda i: routed(PAYLOAD, session_key=SESSIONS[i % 64]),
        }
        names, fns = list(arms), list(arms.values())
        for fn in fns:  # warm every path
            for i in range(300):
                fn(i)
        warm = {}
        for name, step in steps.items():
            start = time.perf_counter()
            for i in range(20_000):
                step(i)
            warm[name] = round((time.perf_counter() - start) / 20_000 * 1e6, 2)
        us: list[list[float]] = [[] for _ in names]
        for i in range(args.calls):
            for k in order(i, len(fns)):
                start = time.perf_counter()
                fns[k](i)
                us[k].append((time.perf_counter() - start) * 1e6)
        base = statistics.median(us[0])
        p50 = {n: statistics.median(u) for n, u in zip(names, us, strict=True)}
        print(
            json.dumps(
                {
                    "warm_us": warm,
                    "p50_us": {n: round(v, 1) for n, v in p50.items()},
                    "extra_us": {n: round(v - base, 1) for n, v in p50.items()},
                }
            )
        )
        client.close()
    finally:
        for proc in procs:
            proc.kill()


if __name__ == "__main__":
    main()
