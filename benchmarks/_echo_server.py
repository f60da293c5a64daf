"""A bytes echo gRPC server for benchmarks: prints its port, serves until stdin closes."""

from __future__ import annotations

import sys
from concurrent import futures

import grpc


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # parent closes stdin (or dies): stop
    server.stop(0)


if __name__ == "__main__":
    main()
