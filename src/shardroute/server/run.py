"""Run one shard server class in this process: ``python -m shardroute.server.run``.

    python -m shardroute.server.run --class shardroute.examples.chat:ChatShard \\
        --etcd 127.0.0.1:2379 --service chat --shard-id s1 --zone zone-a

Prints one line ``READY <address>`` on stdout once the shard is serving and registered,
then serves until SIGTERM (graceful drain, exit 0) or SIGINT. The pytest ``shard_cluster``
fixture starts shards this way. ``--kwargs`` passes extra constructor arguments as a JSON
object (never a password: it would be on the command line). An etcd user is
``--etcd-user``; its password comes from ``--etcd-password-file``,
``$SHARDROUTE_ETCD_PASSWORD_FILE`` or ``$SHARDROUTE_ETCD_PASSWORD``. Works with
:class:`ShardServer` and :class:`AsyncShardServer` subclasses.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from shardroute.errors import ConfigError, ShardRouteError
from shardroute.etcd.credentials import add_etcd_credential_args, etcd_credentials_from_args
from shardroute.security.args import add_tls_args, control_auth_from_args, tls_from_args
from shardroute.server._async import AsyncShardServer
from shardroute.server._sync import ShardServer
from shardroute.server.config import DEFAULT_LEASE_TTL_S
from shardroute.telemetry import serve_prometheus

__all__ = ["load_class", "main"]


def load_class(path: str) -> type[ShardServer] | type[AsyncShardServer]:
    """Import ``"package.module:Class"`` and check it is a shard server class."""
    module_name, sep, name = path.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"--class must be 'package.module:Class', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type) or not issubclass(obj, ShardServer | AsyncShardServer):
        raise ConfigError(f"{path} is not a ShardServer or AsyncShardServer subclass")
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shardroute.server.run", description=__doc__)
    p.add_argument("--class", dest="cls", required=True, help="package.module:Class")
    p.add_argument(
        "--etcd",
        action="append",
        default=[],
        help="etcd host:port (repeatable or comma-separated: every member of the cluster)",
    )
    add_etcd_credential_args(p)
    p.add_argument("--service", required=True)
    p.add_argument("--shard-id", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--advertise-address")
    p.add_argument("--zone", default="")
    p.add_argument("--region", default="")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--capacity", type=int, default=64)
    p.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    p.add_argument("--lease-ttl", type=int, default=DEFAULT_LEASE_TTL_S)
    p.add_argument("--drain-grace", type=float, default=10.0)
    p.add_argument("--kwargs", default="{}", help="extra constructor arguments (JSON object)")
    p.add_argument("--log-level", default="INFO")
    add_tls_args(p, server=True)
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (needs shardroute[otel])",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.shard_id} %(levelname)s %(name)s: %(message)s",
    )
    try:
        cls = load_class(args.cls)
        extra = json.loads(args.kwargs)
        if not isinstance(extra, dict):
            raise ConfigError("--kwargs must be a JSON object")
        if args.metrics_port is not None:
            serve_prometheus(args.metrics_port, host=args.metrics_host)
        labels = dict(item.partition("=")[::2] for item in args.label)
        user, password = etcd_credentials_from_args(args)
        if user is not None:
            extra = {"etcd_user": user, "etcd_password": password, **extra}
        kwargs: dict[str, Any] = {
            "shard_id": args.shard_id,
            "service": args.service,
            "etcd": args.etcd or None,
            "host": args.host,
            "port": args.port,
            "advertise_address": args.advertise_address,
            "zone": args.zone,
            "region": args.region,
            "weight": args.weight,
            "capacity": args.capacity,
            "labels": labels,
            "lease_ttl_s": args.lease_ttl,
            "drain_grace_s": args.drain_grace,
            "tls": tls_from_args(args),
            "control_auth": control_auth_from_args(args),
            **extra,
        }
        if issubclass(cls, AsyncShardServer):
            asyncio.run(_serve_async(cls(**kwargs)))
        else:
            server = cls(**kwargs)
            server.start()
            _ready(server.address)
            server.serve_forever()
    except ShardRouteError as exc:
        print(f"shardroute.server.run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def _ready(address: str) -> None:
    sys.stdout.write(f"READY {address}\n")
    sys.stdout.flush()


async def _serve_async(server: AsyncShardServer) -> None:
    await server.start()
    _ready(server.address)
    await server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
