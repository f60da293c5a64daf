"""The TLS arm of the e2e benchmark (issue 13): routed versus direct over mutual TLS, and
what a new shard channel's handshake costs.

Starts 2 echo servers serving mTLS (throwaway certificates from trustme) and 2 serving
plaintext, in subprocesses. In interleaved A/B slices, as e2e_bench.py does:

- ``tls_p50_ratio``: ``ShardClient(tls=TLSConfig(...))`` versus plain gRPC stubs on
  ``grpc.secure_channel`` with the same credentials, same sessions (goal: the plaintext
  ratio's, p50 <= 1.03); ``plain_p50_ratio`` is the same comparison in plaintext, in the
  same run, for reference;
- ``tls_cost_p50_ratio``: direct calls over mTLS versus direct plaintext calls (what TLS
  itself costs per call on loopback);
- ``handshake_ms``: a new channel's first call (TCP connect, TLS 1.3 handshake with
  client certificate, the call), median of ``--handshakes``; ``plain_connect_ms`` the same
  in plaintext; ``handshake_extra_ms`` their difference.

Prints one JSON line. About 20 s with the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import PIPE
from typing import Any

import grpc
import trustme
from e2e_bench import PAYLOAD, SESSIONS, EchoStub, Samples, timed

from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.model import Shard
from shardroute.security import TLSConfig
from shardroute.testing.certs import issue_tls

clock = time.perf_counter


def _certificates(folder: Path) -> tuple[list[str], TLSConfig]:
    """The servers' (ca, cert, key) paths and the client's TLSConfig."""
    ca = trustme.CA()
    server = issue_tls(ca, folder, "server", "127.0.0.1")
    assert server.ca and server.cert and server.key
    return [server.ca, server.cert, server.key], issue_tls(ca, folder, "client", "bench-client")


def _servers(
    n: int, tls: list[str] | None, prefix: str
) -> tuple[list[subprocess.Popen[bytes]], list[Shard]]:
    script = Path(__file__).with_name("_echo_server.py")
    extra = ["--tls", *tls] if tls else []
    procs = [
        subprocess.Popen([sys.executable, str(script), *extra], stdin=PIPE, stdout=PIPE)
        for _ in range(n)
    ]
    ports = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    shards = [
        Shard(f"{prefix}{i}", f"127.0.0.1:{port}", tls=tls is not None)
        for i, port in enumerate(ports)
    ]
    return procs, shards


def _channel(address: str, tls: TLSConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials())


def _pair(
    shards: list[Shard], tls: TLSConfig | None
) -> tuple[ShardClient, Any, list[EchoStub], list[grpc.Channel]]:
    client = ShardClient(InMemoryTopologySource("bench", shards), timeout=10, tls=tls)
    routed = client.stub(EchoStub)
    channels = {s.id: _channel(s.address, tls) for s in shards}
    direct = {shard_id: EchoStub(channel) for shard_id, channel in channels.items()}
    homes = [direct[client.route(k).shard.id] for k in SESSIONS]
    for key, stub in zip(SESSIONS, homes, strict=True):  # connect and warm both paths
        stub.Echo(PAYLOAD, timeout=10)
        routed.Echo(PAYLOAD, session_key=key)
    return client, routed, homes, list(channels.values())


def _compare(
    routed: Any, homes: list[EchoStub], calls: int, rounds: int
) -> tuple[Samples, Samples]:
    direct_samples, routed_samples = Samples(), Samples()
    n = len(SESSIONS)
    sides: list[tuple[Samples, Callable[[int], object]]] = [
        (direct_samples, lambda i: homes[i % n].Echo(PAYLOAD, timeout=10)),
        (routed_samples, lambda i: routed.Echo(PAYLOAD, session_key=SESSIONS[i % n])),
    ]
    for r in range(rounds):
        for samples, one in sides if r % 2 == 0 else reversed(sides):
            timed(samples, calls, one)
    return direct_samples, routed_samples


def _first_call_ms(address: str, tls: TLSConfig | None, times: int) -> float:
    elapsed = []
    for _ in range(times):
        start = clock()
        with _channel(address, tls) as channel:
            EchoStub(channel).Echo(PAYLOAD, timeout=10)
            elapsed.append((clock() - start) * 1000)
    return statistics.median(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per slice")
    parser.add_argument("--rounds", type=int, default=12, help="A/B slices per side")
    parser.add_argument("--handshakes", type=int, default=30, help="new channels timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server_pems, client_tls = _certificates(Path(folder))
        tls_procs, tls_shards = _servers(2, server_pems, "t")
        plain_procs, plain_shards = _servers(2, None, "p")
        try:
            tls_client, tls_routed, tls_homes, tls_channels = _pair(tls_shards, client_tls)
            plain_client, plain_routed, plain_homes, plain_channels = _pair(plain_shards, None)
            tls_direct, tls_via = Samples(), Samples()
            plain_direct, plain_via = Samples(), Samples()
            for _ in range(2):  # alternate the arms too
                d, r = _compare(tls_routed, tls_homes, args.calls, args.rounds // 2)
                tls_direct.us += d.us
                tls_via.us += r.us
                d, r = _compare(plain_routed, plain_homes, args.calls, args.rounds // 2)
                plain_direct.us += d.us
                plain_via.us += r.us
            handshake = _first_call_ms(tls_shards[0].address, client_tls, args.handshakes)
            connect = _first_call_ms(plain_shards[0].address, None, args.handshakes)
            for channel in [*tls_channels, *plain_channels]:
                channel.close()
            tls_client.close()
            plain_client.close()
        finally:
            for proc in [*tls_procs, *plain_procs]:
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(10)
    med = statistics.median
    result = {
        "tls_direct_p50_us": round(med(tls_direct.us), 1),
        "tls_routed_p50_us": round(med(tls_via.us), 1),
        "tls_p50_ratio": round(med(tls_via.us) / med(tls_direct.us), 3),
        "plain_p50_ratio": round(med(plain_via.us) / med(plain_direct.us), 3),
        "tls_cost_p50_ratio": round(med(tls_direct.us) / med(plain_direct.us), 3),
        "handshake_ms": round(handshake, 2),
        "plain_connect_ms": round(connect, 2),
        "handshake_extra_ms": round(handshake - connect, 2),
        "calls_each": len(tls_direct.us),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
