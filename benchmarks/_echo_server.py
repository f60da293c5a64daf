"""A bytes echo gRPC server for benchmarks: prints its port, serves until stdin closes.

``--tls CA CERT KEY`` serves mutual TLS with those PEM files (tls_bench.py).

``/bench.Echo/Echo`` answers the request; ``/bench.Echo/Stream`` streams it back three
times (the benchmarks time the first message).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from shardroute.server.config import PING_POLICY


def stream(request: bytes, context: Any) -> Iterator[bytes]:
    for _ in range(3):
        yield request


def main() -> None:
    # It stands in for a shard: it accepts the clients' keepalive pings like one.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=PING_POLICY)
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    if len(sys.argv) == 5 and sys.argv[1] == "--tls":
        ca, cert, key = (Path(path).read_bytes() for path in sys.argv[2:5])
        credentials = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # parent closes stdin (or dies): stop
    server.stop(0)


if __name__ == "__main__":
    main()
