"""Routed (ShardClient / AsyncShardClient) versus direct calls to the same shard servers.

Starts 2 echo shard servers in subprocesses. Everything is measured as a ratio against
a plain gRPC stub in the same run, the sides taking turns (unary: call by call, in
rotating order; streams: stream by stream; concurrency: round by round), so the
machine's noise falls on every side alike:

- unary: the same sessions' calls go straight to their shard's channel (direct, a plain
  stub) or through the client (routing, in-flight accounting, metadata, failover plan):
  ``p50_ratio``, ``p99_ratio``, ``throughput_ratio`` (direct time / routed time);
- stream: time to the first message of a server-streaming call (``stream_ttfm_ratio``);
- concurrency: one client shared by 8 threads (``--aio``: 8 tasks on one event loop),
  each calling sessions on both shards; ``concurrent_throughput_ratio`` is routed calls
  per second over direct calls per second;
- ``client_overhead_us``: the client's own cost per unary call with every channel
  replaced by a no-op stub (best of 7 rounds of 20,000 calls, a fresh client);
  ``client_overhead_memo_us`` the same with every session pinned off its home (the
  affinity memo's path: two more metadata entries, the pin check and its renewal);
  ``client_overhead_otel_us`` (sync only) the same with the OpenTelemetry SDK
  configured for the client (a span and metrics per call, into an in-memory span
  exporter and metric reader; null without the SDK). Without an SDK the client takes
  its plain path: ``client_overhead_us`` is the no-SDK figure.

- ring hash: gRPC's own client-side consistent hashing (the C core's ``ring_hash``
  policy, configured in the service config with ``requestHashHeader`` set to the session
  key entry, no xDS; ``GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY=true``) over one
  channel to both servers, sending the same entry: ``p50_ratio_ring_hash`` and
  ``concurrent_throughput_ratio_ring_hash`` against direct calls, and
  ``p50_routed_over_ring_hash`` (the routed p50 over the ring hash p50): what the client
  costs over the floor of client-side hashing with one metadata entry. (Session
  affinity only: no bounded loads, zones, failover plan or sessions that move.)

``--shared-channels`` hands the routed client the direct stubs' own channels (one
connection per shard for both sides), so only the client's own work differs: the
paired harness of docs/benchmarks.md, "Trailers, sampled".
``--exactly-once`` makes every client send a turn id (``RetryPolicy(exactly_once=True)``:
one more metadata entry per call). ``--aio`` measures ``AsyncShardClient`` against plain
``grpc.aio`` stubs, with the same keys. ``*_same_metadata`` repeat two ratios against
direct calls that carry the one metadata entry routed calls send (the session key), which
isolates the client's own cost. Routed calls by reason go to stderr (under concurrency
the bounded-load rule spills and pins sessions, whose calls then carry two more entries).
Prints one JSON line:

    {"mode", "direct_p50_us", "routed_p50_us", "p50_ratio", "p99_ratio",
     "throughput_ratio", "stream_direct_ttfm_us", "stream_routed_ttfm_us",
     "stream_ttfm_ratio", "concurrent_throughput_ratio", "concurrency",
     "p50_ratio_same_metadata", "concurrent_throughput_ratio_same_metadata",
     "p50_ratio_ring_hash", "p50_routed_over_ring_hash",
     "concurrent_throughput_ratio_ring_hash",
     "client_overhead_us", "client_overhead_memo_us", "client_overhead_otel_us",
     "calls_each", "exactly_once"}

Goals (issue 10): p50_ratio <= 1.03 (sync), <= 1.05 (--aio); stream_ttfm_ratio <= 1.05;
concurrent_throughput_ratio >= 0.97; client_overhead_us <= 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from subprocess import PIPE
from typing import Any

import grpc
import grpc.aio

from shardroute import metadata
from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.model import Shard
from shardroute.transport import ChannelPool, RetryPolicy

PAYLOAD = b"x" * 64
SESSIONS = [f"conv-{i}" for i in range(64)]
SESSION_MD = [((metadata.SESSION_KEY, key),) for key in SESSIONS]  # what routed calls send
CONCURRENCY = 8
clock = time.perf_counter


RING_HASH_ENV = "GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY"


def ring_hash_channel(shards: list[Shard], make: Callable[..., Any]) -> Any:
    """One channel to every shard with gRPC's ``ring_hash`` policy hashing the session key
    entry (``make``: ``grpc.insecure_channel`` or ``grpc.aio.insecure_channel``)."""
    config = {
        "loadBalancingConfig": [
            {"ring_hash_experimental": {"requestHashHeader": metadata.SESSION_KEY}}
        ]
    }
    target = "ipv4:" + ",".join(s.address for s in shards)
    return make(target, options=[("grpc.service_config", json.dumps(config))])


def _same(data: bytes) -> bytes:
    return data


class EchoStub:
    """Written the way grpcio-tools writes stubs."""

    def __init__(self, channel: Any) -> None:
        self.Echo = channel.unary_unary(
            "/bench.Echo/Echo", request_serializer=_same, response_deserializer=_same
        )
        self.Stream = channel.unary_stream(
            "/bench.Echo/Stream", request_serializer=_same, response_deserializer=_same
        )


class _NoopCall:
    def trailing_metadata(self) -> Any:
        return ()


class _NoopMultiCallable:
    """grpc's sync multi-callable, answering at once: called, or ``with_call``."""

    _call = _NoopCall()

    def __call__(self, request: bytes, timeout: Any = None, metadata: Any = None) -> bytes:
        return request

    def with_call(
        self, request: bytes, timeout: Any = None, metadata: Any = None
    ) -> tuple[bytes, _NoopCall]:
        return request, self._call


class _NoopChannel:
    def unary_unary(self, path: str, **_: Any) -> Any:
        return _NoopMultiCallable()


class _AioNoopCall:
    """grpc.aio's unary call object, done: awaited for the response, then its trailers."""

    __slots__ = ("request",)

    def __init__(self, request: bytes) -> None:
        self.request = request

    def __await__(self) -> Any:
        return self.request
        yield  # a generator: awaiting it returns at once

    async def trailing_metadata(self) -> Any:
        return ()


class _AioNoopChannel:
    def unary_unary(self, path: str, **_: Any) -> Any:
        def call(request: bytes, timeout: Any = None, metadata: Any = None) -> _AioNoopCall:
            return _AioNoopCall(request)

        return call


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def order(r: int, n: int = 3) -> list[int]:
    """The ``n`` sides of round ``r``: rotated, so no side always runs first."""
    return [(r + k) % n for k in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_servers(n: int) -> tuple[list[subprocess.Popen[bytes]], list[Shard]]:
    script = Path(__file__).with_name("_echo_server.py")
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdin=PIPE, stdout=PIPE) for _ in range(n)
    ]
    ports = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    return procs, [Shard(f"s{i}", f"127.0.0.1:{port}") for i, port in enumerate(ports)]


class Samples:
    """Per-call microseconds and total seconds of one side of an A/B comparison."""

    def __init__(self) -> None:
        self.us: list[float] = []
        self.seconds = 0.0


def pin_off_home(client: ShardClient | AsyncShardClient, shards: list[Shard]) -> None:
    """Pin every session to the shard that is not its home (the memo path)."""
    for key in SESSIONS:
        home = client.route(key).shard.id
        client.router.remember(key, next(s.id for s in shards if s.id != home))


def summary(
    mode: str,
    unary: tuple[Samples, Samples, Samples, Samples],
    stream: tuple[Samples, Samples],
    concurrent: tuple[Samples, Samples, Samples, Samples],
    overhead_us: list[float],
) -> dict[str, Any]:
    (direct, routed, direct_md, ring), (sd, sr), (cd, cr, cmd, cring) = unary, stream, concurrent
    d50, r50 = statistics.median(direct.us), statistics.median(routed.us)
    md50, ring50 = statistics.median(direct_md.us), statistics.median(ring.us)
    t_d, t_r = statistics.median(sd.us), statistics.median(sr.us)
    return {
        "mode": mode,
        "direct_p50_us": round(d50, 1),
        "routed_p50_us": round(r50, 1),
        "p50_ratio": round(r50 / d50, 3),
        "p99_ratio": round(percentile(routed.us, 0.99) / percentile(direct.us, 0.99), 3),
        "throughput_ratio": round(direct.seconds / routed.seconds, 3),
        "stream_direct_ttfm_us": round(t_d, 1),
        "stream_routed_ttfm_us": round(t_r, 1),
        "stream_ttfm_ratio": round(t_r / t_d, 3),
        "concurrent_throughput_ratio": round(cd.seconds / cr.seconds, 3),
        "concurrency": CONCURRENCY,
        # the same ratios against direct calls that carry the session metadata entry
        # routed calls send: what is left is the client's own cost
        "p50_ratio_same_metadata": round(r50 / md50, 3),
        "concurrent_throughput_ratio_same_metadata": round(cmd.seconds / cr.seconds, 3),
        # gRPC's own ring_hash policy over the same entry: the floor of client-side hashing
        "p50_ratio_ring_hash": round(ring50 / d50, 3),
        "p50_routed_over_ring_hash": round(r50 / ring50, 3),
        "concurrent_throughput_ratio_ring_hash": round(cd.seconds / cring.seconds, 3),
        "client_overhead_us": round(overhead_us[0], 2),
        "client_overhead_memo_us": round(overhead_us[1], 2),
        "client_overhead_otel_us": round(overhead_us[2], 1) if len(overhead_us) > 2 else None,
        "calls_each": len(direct.us),
    }


# ----------------------------------------------------------------------------- sync


def interleaved(
    samples: tuple[Samples, ...], calls: int, arms: tuple[Callable[[int], object], ...]
) -> None:
    """``calls`` rounds of one call per arm, the arms taking turns in rotating order:
    paired call by call, so the machine's drift (other processes, CPU frequency) falls
    on every arm alike. Each call's time goes to its arm's samples."""
    for i in range(calls):
        for k in order(i, len(arms)):
            t = clock()
            arms[k](i)
            elapsed = clock() - t
            samples[k].us.append(elapsed * 1e6)
            samples[k].seconds += elapsed


def first_message(start: Callable[[], Iterator[bytes]]) -> float:
    """Seconds from starting a stream to its first message (then drained, untimed)."""
    t = clock()
    stream = start()
    next(stream)
    elapsed = clock() - t
    for _ in stream:  # drain it, untimed
        pass
    return elapsed


def run_sync(shards: list[Shard], args: argparse.Namespace) -> dict[str, Any]:
    client = ShardClient(
        InMemoryTopologySource("bench", shards),
        timeout=10,
        retry=RetryPolicy(exactly_once=args.exactly_once),
    )
    routed = client.stub(EchoStub)
    plain = {s.id: grpc.insecure_channel(s.address) for s in shards}
    if args.shared_channels:  # the client calls over the direct stubs' own channels
        client._core.channels = ChannelPool(lambda shard: plain[shard.id], lambda ch: None)
    direct = {sid: EchoStub(ch) for sid, ch in plain.items()}
    ring_channel = ring_hash_channel(shards, grpc.insecure_channel)
    ring = EchoStub(ring_channel)
    homes = [direct[client.route(k).shard.id] for k in SESSIONS]
    for k, stub, md in zip(SESSIONS, homes, SESSION_MD, strict=True):  # warm every path
        stub.Echo(PAYLOAD, timeout=10)
        routed.Echo(PAYLOAD, session_key=k)
        ring.Echo(PAYLOAD, timeout=10, metadata=md)

    unary = Samples(), Samples(), Samples(), Samples()
    for _ in range(args.slices):
        interleaved(
            unary,
            args.calls,
            (
                lambda i: homes[i % 64].Echo(PAYLOAD, timeout=10),
                lambda i: routed.Echo(PAYLOAD, session_key=SESSIONS[i % 64]),
                lambda i: homes[i % 64].Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[i % 64]),
                lambda i: ring.Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[i % 64]),
            ),
        )

    stream = Samples(), Samples()
    for _ in range(args.stream_slices):
        for i in range(args.stream_calls):
            home, key = homes[i % 64], SESSIONS[i % 64]
            stream[0].us.append(first_message(partial(home.Stream, PAYLOAD, timeout=10)) * 1e6)
            routed_call = partial(routed.Stream, PAYLOAD, session_key=key)
            stream[1].us.append(first_message(routed_call) * 1e6)

    concurrent = Samples(), Samples(), Samples(), Samples()
    with ThreadPoolExecutor(CONCURRENCY) as pool:

        def direct_worker(n: int) -> None:
            for i in range(args.thread_calls):
                homes[(i + n) % 64].Echo(PAYLOAD, timeout=10)

        def routed_worker(n: int) -> None:
            for i in range(args.thread_calls):
                routed.Echo(PAYLOAD, session_key=SESSIONS[(i + n) % 64])

        def direct_md_worker(n: int) -> None:
            for i in range(args.thread_calls):
                homes[(i + n) % 64].Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[(i + n) % 64])

        def ring_worker(n: int) -> None:
            for i in range(args.thread_calls):
                ring.Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[(i + n) % 64])

        workers = [direct_worker, routed_worker, direct_md_worker, ring_worker]
        for r in range(args.rounds):
            for k in order(r, len(workers)):
                start = clock()
                list(pool.map(workers[k], [n * 8 for n in range(CONCURRENCY)]))
                concurrent[k].seconds += clock() - start
    log(f"sync routed calls by reason: {client.stats.snapshot()}")

    client.close()
    ring_channel.close()
    # The client's own cost: routed calls on no-op channels, on a fresh client (the
    # concurrent phase pinned sessions), then with every session pinned off its home.
    noop = ShardClient(
        InMemoryTopologySource("bench", shards),
        timeout=10,
        retry=RetryPolicy(exactly_once=args.exactly_once),
    )
    noop._core.channels = ChannelPool(lambda address: _NoopChannel(), lambda ch: None)
    echo = noop.stub(EchoStub).Echo
    overhead: list[float] = []
    for pinned in (False, True):
        if pinned:
            pin_off_home(noop, shards)
        for i in range(1000):
            echo(PAYLOAD, session_key=SESSIONS[i % 64])
        rounds = []
        for _ in range(7):  # best of 7, as timeit does: the machine's noise only adds time
            start = clock()
            for i in range(20_000):
                echo(PAYLOAD, session_key=SESSIONS[i % 64])
            rounds.append((clock() - start) / 20_000 * 1e6)
        overhead.append(min(rounds))
    noop.close()
    otel = otel_overhead(shards)
    if otel is not None:
        overhead.append(otel)
    return summary("sync", unary, stream, concurrent, overhead)


def otel_overhead(shards: list[Shard]) -> float | None:
    """The client's cost per unary call on no-op channels with the OpenTelemetry SDK
    (in-memory span exporter and metric reader): best of 5 rounds of 2,000 calls."""
    try:
        from shardroute.testing.otel import OtelCapture
    except ImportError:  # no SDK installed
        return None
    capture = OtelCapture()
    client = ShardClient(
        InMemoryTopologySource("bench", shards), timeout=10, telemetry=capture.telemetry()
    )
    client._core.channels = ChannelPool(lambda address: _NoopChannel(), lambda ch: None)
    echo = client.stub(EchoStub).Echo
    for i in range(500):
        echo(PAYLOAD, session_key=SESSIONS[i % 64])
    rounds = []
    for _ in range(5):
        capture.exporter.clear()
        start = clock()
        for i in range(2000):
            echo(PAYLOAD, session_key=SESSIONS[i % 64])
        rounds.append((clock() - start) / 2000 * 1e6)
    client.close()
    capture.shutdown()
    return min(rounds)


# ----------------------------------------------------------------------------- asyncio


async def ainterleaved(
    samples: tuple[Samples, ...],
    calls: int,
    arms: tuple[Callable[[int], Awaitable[object]], ...],
) -> None:
    """:func:`interleaved`, awaiting each call."""
    for i in range(calls):
        for k in order(i, len(arms)):
            t = clock()
            await arms[k](i)
            elapsed = clock() - t
            samples[k].us.append(elapsed * 1e6)
            samples[k].seconds += elapsed


async def afirst_message(start: Callable[[], Any]) -> float:
    t = clock()
    iterator = start().__aiter__()
    await iterator.__anext__()
    elapsed = clock() - t
    async for _ in iterator:
        pass
    return elapsed


async def run_aio(shards: list[Shard], args: argparse.Namespace) -> dict[str, Any]:
    client = AsyncShardClient(
        InMemoryTopologySource("bench", shards),
        timeout=10,
        retry=RetryPolicy(exactly_once=args.exactly_once),
    )
    routed = client.stub(EchoStub)
    channels = {s.id: grpc.aio.insecure_channel(s.address) for s in shards}
    if args.shared_channels:  # the client calls over the direct stubs' own channels
        client._core.channels = ChannelPool(lambda shard: channels[shard.id], lambda ch: None)
    direct = {sid: EchoStub(ch) for sid, ch in channels.items()}
    ring_channel = ring_hash_channel(shards, grpc.aio.insecure_channel)
    ring = EchoStub(ring_channel)
    homes = [direct[client.route(k).shard.id] for k in SESSIONS]
    for k, stub, md in zip(SESSIONS, homes, SESSION_MD, strict=True):
        await stub.Echo(PAYLOAD, timeout=10)
        await routed.Echo(PAYLOAD, session_key=k)
        await ring.Echo(PAYLOAD, timeout=10, metadata=md)

    unary = Samples(), Samples(), Samples(), Samples()
    for _ in range(args.slices):
        await ainterleaved(
            unary,
            args.calls,
            (
                lambda i: homes[i % 64].Echo(PAYLOAD, timeout=10),
                lambda i: routed.Echo(PAYLOAD, session_key=SESSIONS[i % 64]),
                lambda i: homes[i % 64].Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[i % 64]),
                lambda i: ring.Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[i % 64]),
            ),
        )

    stream = Samples(), Samples()
    for _ in range(args.stream_slices):
        for i in range(args.stream_calls):
            home, key = homes[i % 64], SESSIONS[i % 64]
            direct_ttfm = await afirst_message(partial(home.Stream, PAYLOAD, timeout=10))
            routed_ttfm = await afirst_message(partial(routed.Stream, PAYLOAD, session_key=key))
            stream[0].us.append(direct_ttfm * 1e6)
            stream[1].us.append(routed_ttfm * 1e6)

    async def direct_task(n: int) -> None:
        for i in range(args.thread_calls):
            await homes[(i + n) % 64].Echo(PAYLOAD, timeout=10)

    async def routed_task(n: int) -> None:
        for i in range(args.thread_calls):
            await routed.Echo(PAYLOAD, session_key=SESSIONS[(i + n) % 64])

    async def direct_md_task(n: int) -> None:
        for i in range(args.thread_calls):
            await homes[(i + n) % 64].Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[(i + n) % 64])

    async def ring_task(n: int) -> None:
        for i in range(args.thread_calls):
            await ring.Echo(PAYLOAD, timeout=10, metadata=SESSION_MD[(i + n) % 64])

    concurrent = Samples(), Samples(), Samples(), Samples()
    tasks = [direct_task, routed_task, direct_md_task, ring_task]
    for r in range(args.rounds):
        for k in order(r, len(tasks)):
            start = clock()
            await asyncio.gather(*(tasks[k](n * 8) for n in range(CONCURRENCY)))
            concurrent[k].seconds += clock() - start
    log(f"aio routed calls by reason: {client.stats.snapshot()}")

    await client.close()
    for ch in (*channels.values(), ring_channel):
        await ch.close()
    noop = AsyncShardClient(
        InMemoryTopologySource("bench", shards),
        timeout=10,
        retry=RetryPolicy(exactly_once=args.exactly_once),
    )
    noop._core.channels = ChannelPool(lambda address: _AioNoopChannel(), lambda ch: None)
    echo = noop.stub(EchoStub).Echo
    overhead: list[float] = []
    for pinned in (False, True):
        if pinned:
            pin_off_home(noop, shards)
        for i in range(1000):
            await echo(PAYLOAD, session_key=SESSIONS[i % 64])
        rounds = []
        for _ in range(7):
            start = clock()
            for i in range(20_000):
                await echo(PAYLOAD, session_key=SESSIONS[i % 64])
            rounds.append((clock() - start) / 20_000 * 1e6)
        overhead.append(min(rounds))
    await noop.close()
    return summary("aio", unary, stream, concurrent, overhead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aio", action="store_true", help="AsyncShardClient vs grpc.aio")
    parser.add_argument("--slices", type=int, default=30, help="unary rounds")
    parser.add_argument("--calls", type=int, default=250, help="unary calls per side per round")
    parser.add_argument("--stream-slices", type=int, default=10, help="stream slice pairs")
    parser.add_argument("--stream-calls", type=int, default=100, help="streams per slice")
    parser.add_argument("--rounds", type=int, default=12, help="concurrent A/B round pairs")
    parser.add_argument(
        "--exactly-once", action="store_true", help="clients send turn ids (one more entry)"
    )
    parser.add_argument(
        "--shared-channels",
        action="store_true",
        help="routed calls use the direct stubs' channels (only the client's work differs)",
    )
    parser.add_argument("--thread-calls", type=int, default=100, help="calls per thread per round")
    args = parser.parse_args()
    os.environ[RING_HASH_ENV] = "true"  # read by gRPC's core when it makes the first channel
    procs, shards = start_servers(2)
    try:
        result = asyncio.run(run_aio(shards, args)) if args.aio else run_sync(shards, args)
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(10)
    print(json.dumps({**result, "exactly_once": args.exactly_once}), flush=True)


if __name__ == "__main__":
    main()
