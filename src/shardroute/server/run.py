"""Run one shard server class in this process: ``shardroute serve module:Class``, or
``python -m shardroute.server.run --class module:Class`` (the same options).

    shardroute serve shardroute.examples.chat:ChatShard \\
        --etcd 127.0.0.1:2379 --service chat --shard-id s1 --zone zone-a

The module is imported with the working directory (or ``--app-dir``) first on the import
path, as ``uvicorn module:app`` does; a module that is not found, a missing attribute or
an object that is not a shard server class, no ``--etcd``, an address it cannot listen
on (the line says why) or etcd unreachable (``--wait-for-etcd`` serves anyway and
registers once etcd answers) is a one-line error and exit code 2.

Prints one line ``READY <address>`` on stdout once the shard is serving and registered
(with ``--wait-for-etcd``: once it is serving; it registers when etcd answers), then
serves until SIGTERM (graceful drain, exit 0) or SIGINT. The pytest ``shard_cluster``
fixture starts shards this way. ``--kwargs`` passes extra constructor arguments as a JSON
object (never a password: it would be on the command line). An etcd user is
``--etcd-user``; its password comes from ``--etcd-password-file``,
``$SHARDROUTE_ETCD_PASSWORD_FILE`` or ``$SHARDROUTE_ETCD_PASSWORD``. Works with
:class:`ShardServer` and :class:`AsyncShardServer` subclasses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from shardroute._cli_serve import add_serve_arguments, import_class, listen_address
from shardroute._listen import cannot_listen, host_port
from shardroute.errors import ConfigError, ShardRouteError
from shardroute.etcd.credentials import etcd_credentials_from_args
from shardroute.security.args import control_auth_from_args, tls_from_args
from shardroute.server._async import AsyncShardServer
from shardroute.server._sync import ShardServer
from shardroute.telemetry import serve_prometheus

__all__ = ["load_class", "main", "serve"]


def load_class(path: str, app_dir: str | None = None) -> type[ShardServer] | type[AsyncShardServer]:
    """Import ``"package.module:Class"`` (``app_dir`` first on ``sys.path`` when given)
    and check it is a shard server class; a one-line :class:`ConfigError` otherwise."""
    obj = import_class(path, app_dir)
    if not isinstance(obj, type) or not issubclass(obj, ShardServer | AsyncShardServer):
        kind = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise ConfigError(
            f"{path} is {kind}, not a ShardServer or AsyncShardServer subclass (shardroute.server)"
        )
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shardroute.server.run", description=__doc__)
    add_serve_arguments(p, positional=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return serve(_parser().parse_args(argv), prog="shardroute.server.run")


def serve(args: argparse.Namespace, prog: str = "shardroute serve") -> int:
    """Run the shard the options of :func:`~shardroute._cli_serve.add_serve_arguments`
    describe until it stops: 0 after a drain, 2 (one line on stderr) on a shardroute
    error such as a bad class or etcd unreachable."""
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.shard_id} %(levelname)s %(name)s: %(message)s",
    )
    try:
        cls = load_class(args.cls, args.app_dir)
        try:
            extra = json.loads(args.kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--kwargs must be a JSON object: {exc}") from None
        if not isinstance(extra, dict):
            raise ConfigError("--kwargs must be a JSON object")
        host, port = listen_address(args)
        if not args.etcd:
            raise ConfigError(
                "no --etcd: a shard registers in etcd, where clients find it; pass --etcd "
                "HOST:PORT (`shardroute etcd` runs a development etcd at 127.0.0.1:2379)"
            )
        why = cannot_listen(host, port) if port else None
        if why is not None:
            raise ConfigError(
                f"cannot listen on {host_port(host, port)} ({why}); nothing was started; "
                "choose another address with --listen HOST:PORT (port 0: any free port)"
            )
        if args.metrics_port is not None:
            serve_prometheus(args.metrics_port, host=args.metrics_host)
        labels = dict(item.partition("=")[::2] for item in args.label)
        user, password = etcd_credentials_from_args(args)
        if user is not None:
            extra = {"etcd_user": user, "etcd_password": password, **extra}
        if args.wait_for_etcd:
            extra = {"wait_for_etcd": True, **extra}
        if args.lease_ttl is not None:
            extra = {"lease_ttl_s": args.lease_ttl, **extra}
        kwargs: dict[str, Any] = {
            "shard_id": args.shard_id,
            "service": args.service,
            "etcd": args.etcd,
            "host": host,
            "port": port,
            "advertise_address": args.advertise_address,
            "zone": args.zone,
            "region": args.region,
            "weight": args.weight,
            "capacity": args.capacity,
            "labels": labels,
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
        print(f"{prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
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
