"""``shardroute etcd``: a development etcd in one command, in the foreground.

    shardroute etcd [--data-dir DIR] [--port 2379] [--peer-port PORT] [--host 127.0.0.1]

One etcd member from the installed binary (found as the test fixtures find it:
:func:`shardroute.testing.find_etcd_binary`), with auto-compaction and a space quota on
(:data:`~shardroute.testing.etcd.DEFAULT_AUTO_COMPACTION`), its data written with fsync,
serving until Ctrl-C or SIGTERM, then stopped cleanly. Not a production etcd: one member,
no TLS, no authentication (docs/operations.md for a real cluster).

The data stays in ``./shardroute-etcd.data`` by default, as etcd's own default
(``./default.etcd``) stays in the working directory: a restarted dev etcd keeps its
shards' sessions, and the folder is in plain sight when you want to start empty (delete
it).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from shardroute._listen import cannot_listen, host_port
from shardroute.errors import ConfigError, EtcdUnavailable, ShardRouteError

__all__ = ["DEFAULT_DATA_DIR", "add_dev_etcd_command"]

DEFAULT_DATA_DIR = "shardroute-etcd.data"
"""Where ``shardroute etcd`` keeps its data, relative to the working directory."""


def add_dev_etcd_command(commands: Any) -> None:
    """Add the ``etcd`` command to the ``shardroute`` parser's subcommands."""
    parser = commands.add_parser(
        "etcd", help="run a development etcd in the foreground until Ctrl-C (one member)"
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"where etcd keeps its data, kept between runs (default: ./{DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--port", type=int, default=2379, help="client port (default: 2379)")
    parser.add_argument("--peer-port", type=int, help="peer port (default: --port + 1)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the client port listens on (default: 127.0.0.1; 0.0.0.0: every interface)",
    )
    parser.set_defaults(func=_cmd_etcd)


def _check_port(host: str, port: int, flag: str) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{flag} must be a port number from 1 to 65535, got {port}")
    why = cannot_listen(host, port)
    if why is not None:
        raise ConfigError(
            f"cannot listen on {host_port(host, port)} ({why}); nothing was started; "
            f"choose another port with {flag}"
        )


def _cmd_etcd(args: argparse.Namespace) -> int:
    from shardroute.testing.etcd import (
        DEFAULT_AUTO_COMPACTION,
        DEFAULT_QUOTA_BACKEND_BYTES,
        EtcdServer,
        find_etcd_binary,
    )

    class DevEtcd(EtcdServer):
        listen_host = args.host
        stop_with_parent = True  # a SIGKILL of this command stops etcd too

        def _cluster_args(self, peer: str) -> list[str]:
            return ["--name=shardroute-dev", f"--initial-cluster=shardroute-dev={peer}"]

    binary = find_etcd_binary()  # first: no folder is made when there is no etcd
    peer_port = args.peer_port or args.port + 1
    _check_port(args.host, args.port, "--port")
    _check_port("127.0.0.1", peer_port, "--peer-port")
    data_dir = os.path.abspath(args.data_dir)
    log = os.path.join(data_dir, "etcd.log")
    try:
        os.makedirs(data_dir, exist_ok=True)
        with open(log, "ab"):  # a folder that exists but cannot be written fails here
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot use {data_dir} as etcd's data dir ({exc.strerror}); nothing was "
            "started; choose a folder you can write with --data-dir"
        ) from None
    server = DevEtcd(binary, data_dir=data_dir, extra_args=("--unsafe-no-fsync=false",))
    server.client_port, server.peer_port = args.port, peer_port
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        try:
            server.start()
        except EtcdUnavailable:
            raise EtcdUnavailable(
                f"etcd did not start; nothing was written to etcd; its log is {log} "
                f"(a data dir another etcd is using? try --data-dir)"
            ) from None
        mode, retention = DEFAULT_AUTO_COMPACTION
        print(
            f"shardroute etcd: a development etcd (one member, no TLS, no auth)\n"
            f"  endpoint    {server.endpoint}   (--etcd {server.endpoint})\n"
            f"  data dir    {data_dir}   (kept between runs; delete it to start empty)\n"
            f"  log         {log}\n"
            f"  compaction  {mode}, every {retention}; quota "
            f"{DEFAULT_QUOTA_BACKEND_BYTES // 2**20} MiB\n"
            f"  stop        Ctrl-C or SIGTERM (pid {os.getpid()})",
            flush=True,
        )
        while not stop.wait(0.5):
            if not server.running:
                raise ShardRouteError(
                    f"etcd exited on its own; its data is in {data_dir}; see its log {log}, "
                    "then start it again with the same command"
                )
        server.stop()
        print(f"shardroute etcd: stopped; the data is kept in {data_dir}", flush=True)
        return 0
    finally:
        server.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
