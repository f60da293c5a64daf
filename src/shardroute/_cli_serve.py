"""``shardroute serve module:Class``: the options of a shard process, and finding its class.

Shared by ``shardroute serve`` and ``python -m shardroute.server.run`` (which runs the
shard: :func:`shardroute.server.run.serve`). This module imports no server code, so the
``shardroute`` command starts as fast without it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Any

from shardroute.errors import ConfigError
from shardroute.etcd.credentials import add_etcd_credential_args
from shardroute.security.args import add_tls_args

__all__ = ["add_serve_arguments", "add_serve_command", "import_class", "listen_address"]

_FORM = "'module:Class' (e.g. counter_shard:CounterShard, like uvicorn's module:app)"


def add_serve_command(commands: Any) -> None:
    """Add the ``serve`` command to the ``shardroute`` parser's subcommands."""
    parser = commands.add_parser(
        "serve",
        help="run a shard of your ShardServer class (like uvicorn module:app); docs/server.md",
    )
    add_serve_arguments(parser, positional=True)
    parser.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from shardroute.server.run import serve

    return serve(args)


def add_serve_arguments(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    """The options of one shard process; the class is the ``APP`` argument
    (``positional``) or ``--class``; ``dest`` is ``cls`` either way."""
    if positional:
        parser.add_argument("cls", metavar="MODULE:CLASS", help=f"the shard class, {_FORM}")
    else:
        parser.add_argument("--class", dest="cls", required=True, help=f"the shard class, {_FORM}")
    parser.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="put DIR first on the import path, to find MODULE (default: the working directory)",
    )
    parser.add_argument(
        "--etcd",
        action="append",
        default=[],
        help="etcd host:port (repeatable or comma-separated: every member of the cluster)",
    )
    add_etcd_credential_args(parser)
    parser.add_argument(
        "--wait-for-etcd",
        action="store_true",
        help="etcd unreachable at start: serve anyway and register once it answers "
        "(default: exit 2)",
    )
    parser.add_argument("--service", required=True, help="the service's name in etcd")
    parser.add_argument("--shard-id", required=True, help="this shard's id, unique in the service")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (port 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (or --listen)")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (0: any free port)")
    parser.add_argument("--advertise-address", help="the address clients use, if not the bound one")
    parser.add_argument("--zone", default="")
    parser.add_argument("--region", default="")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    parser.add_argument("--lease-ttl", type=int, help="registration lease TTL, s (default: 10)")
    parser.add_argument("--drain-grace", type=float, default=10.0)
    parser.add_argument("--kwargs", default="{}", help="extra constructor arguments (JSON object)")
    parser.add_argument("--log-level", default="INFO")
    add_tls_args(parser, server=True)
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (needs shardroute[otel])",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of the metrics endpoint"
    )


def listen_address(args: argparse.Namespace) -> tuple[str, int]:
    """``(host, port)`` from ``--listen HOST:PORT``, else ``--host`` and ``--port``."""
    if not args.listen:
        return args.host, args.port
    if (args.host, args.port) != ("127.0.0.1", 0):
        raise ConfigError("give --listen HOST:PORT or --host and --port, not both")
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT (e.g. 127.0.0.1:7001), got {args.listen!r}")
    return host.strip("[]"), int(port)


def import_class(path: str, app_dir: str | None = ".") -> Any:
    """The object ``"package.module:Class"`` names, importing the module with ``app_dir``
    first on ``sys.path``. Every failure is a one-line :class:`ConfigError` saying what to
    fix (the caller checks the object is a shard server class)."""
    module_name, sep, name = path.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"the shard class must be {_FORM}, got {path!r}")
    if app_dir is not None:
        folder = os.path.abspath(app_dir)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    where = f"from {os.path.abspath(app_dir or '.')}"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"cannot import module {module_name!r} {where}: no such module; run the "
                "command in the folder that holds it, or pass --app-dir"
            ) from None
        raise ConfigError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ConfigError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            home = getattr(obj, "__name__", None)
            found = sorted(
                n
                for n, v in vars(obj).items()
                if isinstance(v, type) and v.__module__ == home and not n.startswith("_")
            )
            raise ConfigError(
                f"{module_name!r} has no attribute {part!r} (classes defined there: "
                f"{', '.join(found) or 'none'})"
            )
        obj = getattr(obj, part)
    return obj


def _one_line(exc: BaseException) -> str:
    """``Type: message (file, line N)`` of the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}"
