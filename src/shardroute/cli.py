"""The ``shardroute`` operator command.

    shardroute topology --etcd HOST:PORT --service NAME [--json] [--watch]
    shardroute top --etcd HOST:PORT --service NAME [--json] [--updates N]
    shardroute migrate --etcd HOST:PORT --service NAME --session KEY [--to SHARD]
        [--session-store URL [--session-store-password-file PATH]]
    shardroute drain --etcd HOST:PORT --service NAME --shard ID [--grace S] [--wait]
        (--shard-id ID: the same, as in shardroute serve)
    shardroute demo [--duration S] [--json] [--metrics-port PORT] [--store etcd|redis] [--tls]
    shardroute scale-advice --etcd HOST:PORT --service NAME [--watch] [--json] [...]
    shardroute demo --autoscale [--duration S] [--json]
    shardroute demo --chaos [--etcd-cluster] [--duration S] [--json]
    shardroute etcd [--data-dir D] [--port P] [--host H]
    shardroute serve MODULE:CLASS --etcd HOST:PORT --service NAME --shard-id ID [--zone Z]
        [--listen HOST:PORT] [...]

Exit codes: 0 success, 2 etcd unreachable or bad arguments, 3 (``drain``) sessions left
behind or not reported, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from shardroute._cli_etcd import add_dev_etcd_command
from shardroute._cli_help import describe_commands
from shardroute._cli_serve import add_serve_command
from shardroute._exit_guard import DEFAULT_EXIT_GRACE_S, exit_within
from shardroute._validate import seconds
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.records import load_to_dict, shard_to_dict
from shardroute.errors import ConfigError, ShardRouteError, ShardUnavailable
from shardroute.etcd import EtcdOptions
from shardroute.etcd.credentials import add_etcd_credential_args, etcd_credentials_from_args
from shardroute.model import Topology
from shardroute.scaling.commands import add_commands as add_scaling_commands
from shardroute.security import ChannelMaker
from shardroute.security.args import add_tls_args, control_token_from_args, tls_from_args

__all__ = ["main", "topology_to_dict"]


def topology_to_dict(topology: Topology) -> dict[str, Any]:
    """The JSON shape printed by ``shardroute topology --json`` (docs/operations.md)."""
    shards = []
    for shard in topology.shards.values():
        load = topology.loads.get(shard.id)
        shards.append(
            {
                "id": shard.id,
                **{k: v for k, v in shard_to_dict(shard).items() if k not in ("schema", "lease")},
                "load": None if load is None else load_to_dict(load),
            }
        )
    return {"revision": topology.revision, "shards": shards}


def _table(topology: Topology) -> str:
    rows = [("ID", "ADDRESS", "ZONE", "REGION", "WEIGHT", "CAPACITY", "STATE", "INFLIGHT")]
    for shard in topology.shards.values():
        load = topology.loads.get(shard.id)
        rows.append(
            (
                shard.id,
                shard.address,
                shard.zone or "-",
                shard.region or "-",
                f"{shard.weight:g}",
                str(shard.capacity),
                shard.state.value,
                "-" if load is None else str(load.inflight),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    count = len(topology)
    lines.append(f"revision {topology.revision}, {count} shard{'' if count == 1 else 's'}")
    if topology.malformed:
        lines.append(f"skipped malformed: {', '.join(sorted(topology.malformed))}")
    return "\n".join(line.rstrip() for line in lines)


def _print(topology: Topology, as_json: bool) -> None:
    if as_json:
        print(json.dumps(topology_to_dict(topology), separators=(",", ":")), flush=True)
    else:
        print(_table(topology), flush=True)


def _add_etcd_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--etcd",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="etcd endpoint (repeat or comma-separate for several)",
    )
    parser.add_argument("--service", required=True, help="service name")
    parser.add_argument("--timeout", type=_positive, default=5.0, help="etcd call timeout (s)")
    parser.add_argument("--ca-cert", help="CA certificate (PEM) for TLS to etcd")
    parser.add_argument("--cert-key", help="client key (PEM) for TLS to etcd")
    parser.add_argument("--cert-cert", help="client certificate (PEM) for TLS to etcd")
    add_etcd_credential_args(
        parser, user_flags=("--user", "--etcd-user"), deprecated_password_flag=True
    )


def _etcd_options(args: argparse.Namespace) -> EtcdOptions:
    user, password = etcd_credentials_from_args(args)
    return EtcdOptions(
        tuple(args.etcd),  # each may be comma-separated: EtcdOptions splits them
        timeout=args.timeout,
        ca_cert=args.ca_cert,
        cert_key=args.cert_key,
        cert_cert=args.cert_cert,
        user=user,
        password=password,
    )


def _source(args: argparse.Namespace) -> EtcdTopologySource:
    return EtcdTopologySource(_etcd_options(args), args.service)


def _cmd_topology(args: argparse.Namespace) -> int:
    source = _source(args)
    try:
        source.start()
        if not args.watch:
            _print(source.current(), args.json)
            return 0
        updates: queue.SimpleQueue[Topology] = queue.SimpleQueue()
        source.subscribe(updates.put)
        last = source.current()
        _print(last, args.json)
        was_stale = False
        while True:
            try:
                topology = updates.get(timeout=0.5)
            except queue.Empty:
                stale = source.staleness() > 0
                if stale and not was_stale:
                    print(
                        f"shardroute: {source.last_error}; showing the last view", file=sys.stderr
                    )
                was_stale = stale
                continue
            if topology.revision != last.revision:
                _print(topology, args.json)
                last = topology
    finally:
        source.close()


def _cmd_top(args: argparse.Namespace) -> int:
    from shardroute.telemetry.top import run_top

    source = _source(args)
    try:
        source.start()
        clear = not args.json and sys.stdout.isatty()
        return run_top(source, as_json=args.json, out=sys.stdout, updates=args.updates, clear=clear)
    finally:
        source.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardroute",
        description="shardroute operator tool",
        epilog="Each command's --help says what it does and its exit codes (docs/operations.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    topo = commands.add_parser("topology", help="show the shards of a service")
    _add_etcd_args(topo)
    topo.add_argument("--json", action="store_true", help="one JSON line per snapshot")
    topo.add_argument("--watch", action="store_true", help="print a line per change")
    topo.set_defaults(func=_cmd_topology)
    top = commands.add_parser("top", help="live view of the fleet: load, queue, sessions")
    _add_etcd_args(top)
    top.add_argument("--json", action="store_true", help="one JSON line per change")
    top.add_argument("--updates", type=int, help="stop after this many views")
    top.set_defaults(func=_cmd_top)
    move = commands.add_parser("migrate", help="move a session to another shard")
    _add_etcd_args(move)
    move.add_argument("--session", required=True, help="the session key")
    move.add_argument("--to", metavar="SHARD", help="target shard (default: the router's choice)")
    move.add_argument(
        "--session-store",
        metavar="URL",
        help="the shards' session store when not etcd: redis://host:port/db, rediss://..., "
        "redis+cluster://h1:p1,h2:p2 (no password here: --session-store-password-file)",
    )
    move.add_argument(
        "--session-store-password-file",
        metavar="PATH",
        help="a file whose first line is the session store's password",
    )
    add_tls_args(move)
    move.set_defaults(func=_cmd_migrate)
    drain = commands.add_parser(
        "drain", help="drain a shard: move its sessions away, then it deregisters and stops"
    )
    _add_etcd_args(drain)
    drain.add_argument("--shard", "--shard-id", dest="shard", required=True, help="the shard id")
    drain.add_argument("--grace", type=_positive, help="seconds for in-flight calls to finish")
    drain.add_argument("--max-moves", type=int, default=0, help="concurrent session moves")
    drain.add_argument("--wait", action="store_true", help="return once the shard has left")
    add_tls_args(drain)
    drain.set_defaults(func=_cmd_drain)
    demo = commands.add_parser(
        "demo",
        help="run chat traffic over 4 local shards; kill one, add one, drain one (embedded etcd)",
    )
    demo.add_argument("--duration", type=_positive, default=20.0, help="seconds of traffic")
    demo.add_argument("--json", action="store_true", help="only print the summary, as JSON")
    demo.add_argument("--shards", type=int, default=4, help="chat shards to start (>= 3)")
    demo.add_argument("--sessions", type=int, default=200, help="conversations")
    demo.add_argument("--workers", type=int, default=8, help="client threads")
    demo.add_argument(
        "--autoscale",
        action="store_true",
        help="traffic ramps up, peaks and falls; an autoscaler starts and drains shards",
    )
    demo.add_argument(
        "--chaos",
        action="store_true",
        help="apply faults in turn (kill, SIGSTOP, etcd restart, compaction); a summary each",
    )
    demo.add_argument(
        "--etcd-cluster",
        action="store_true",
        help="with --chaos: etcd as an embedded 3-member cluster, and its leader lost",
    )
    demo.add_argument(
        "--store",
        choices=("etcd", "redis"),
        default="etcd",
        help="session store: the embedded etcd, or an embedded redis-server beside it",
    )
    demo.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every hop with throwaway certificates (docs/security.md)",
    )
    demo.add_argument(
        "--shard-bound",
        action="store_true",
        help="shards check the balance bound for new sessions (routing.shard_bound)",
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        help="serve the demo client's metrics at http://127.0.0.1:PORT/metrics (shardroute[otel])",
    )
    demo.set_defaults(func=_cmd_demo)
    add_scaling_commands(commands, _add_etcd_args, _source)
    add_dev_etcd_command(commands)
    add_serve_command(commands)
    describe_commands(commands)
    return parser


def _session_store(args: argparse.Namespace) -> Any:
    """The store ``--session-store`` names (None: etcd's); its password from a file only."""
    if not args.session_store:
        if args.session_store_password_file:
            raise ConfigError("--session-store-password-file needs --session-store")
        return None
    from shardroute.sessions.redis_options import RedisOptions
    from shardroute.sessions.redis_store import RedisSessionStore

    options = RedisOptions.from_url(args.session_store)
    if options.password is not None:
        raise ConfigError(
            "keep the session store's password off the command line: put it in a file and "
            "pass --session-store-password-file"
        )
    if args.session_store_password_file:
        try:
            with open(args.session_store_password_file, encoding="utf-8") as file:
                password = file.readline().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the session store password file: {exc}") from exc
        options = RedisOptions.from_url(args.session_store, password=password)
    return RedisSessionStore(options, args.service)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from shardroute.etcd import EtcdClient
    from shardroute.sessions.migrator import Migrator

    source = _source(args)
    try:
        source.start()
        with Migrator(
            EtcdClient(source.options),
            args.service,
            source,
            store=_session_store(args),
            close_etcd=True,
            tls=tls_from_args(args),
            control_token=control_token_from_args(args),
        ) as mover:
            result = mover.migrate(args.session, target=args.to)
        print(
            json.dumps(
                {
                    "session": result.session_key,
                    "from": result.source,
                    "to": result.target,
                    "epoch": result.epoch,
                    "state_bytes": result.state_bytes,
                    "from_store": result.from_store,
                    "ms": round(result.duration_s * 1000, 1),
                }
            ),
            flush=True,
        )
        return 0
    finally:
        source.close()


def _cmd_drain(args: argparse.Namespace) -> int:
    import grpc

    from shardroute._proto import shard_pb2
    from shardroute.server.drain import DRAIN_REPORT_S, EXIT_LEFT_BEHIND, drain_counts
    from shardroute.sessions.migrator import control_stub
    from shardroute.transport.failures import rpc_brief

    source = _source(args)
    try:
        source.start()
        shard = source.current().shard(args.shard)
        request = shard_pb2.DrainRequest(
            grace_s=args.grace or 0.0,
            migrate_sessions=True,
            max_concurrent_moves=max(0, args.max_moves),
            wait_for_moves=True,
        )
        token = control_token_from_args(args)
        # The moves end by the grace period (the shard's own when --grace is not given).
        timeout = args.timeout + (args.grace or DRAIN_REPORT_S) + 15.0
        with ChannelMaker(tls_from_args(args)).sync_channel(shard) as channel:
            try:
                reply = control_stub(channel).Drain(
                    request, timeout=timeout, metadata=token.metadata() if token else ()
                )
            except grpc.RpcError as exc:
                raise ShardUnavailable(
                    f"shard {shard.id!r} at {shard.address} did not take the drain "
                    f"({rpc_brief(exc)}); its sessions are where they were (a shard on "
                    "an in-memory store keeps them only while it runs): see its state "
                    "with `shardroute topology` and run the drain again if it is still "
                    "active",
                    (shard.id,),
                ) from exc
        print(drain_counts(shard.id, reply), flush=True)
        if args.wait:
            source.wait_for(lambda t: shard.id not in t.shards, timeout=3600)
            print(f"shard {shard.id} has left", flush=True)
        left = reply.sessions_not_moved + reply.sessions_failed
        return EXIT_LEFT_BEHIND if left or not reply.moves_counted else 0
    finally:
        source.close()


def _positive(text: str) -> float:
    try:
        return seconds("the value", float(text))
    except ValueError:  # not a number, <= 0, or NaN and inf (floats, refused too)
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from shardroute import demo

    if args.autoscale:
        from shardroute.demo._autoscale import main as autoscale_main

        return autoscale_main(
            args.duration, args.json, sessions=max(1, args.sessions), workers=args.workers
        )
    if args.chaos:
        from shardroute.demo._chaos import main as chaos_main

        sessions = min(max(1, args.sessions), 16)
        cluster = args.etcd_cluster
        return chaos_main(args.duration, args.json, sessions=sessions, etcd_cluster=cluster)
    if args.shards < 3 or args.sessions < 1 or args.workers < 1:
        raise ConfigError("the demo needs --shards >= 3, --sessions >= 1, --workers >= 1")
    if args.metrics_port is not None:
        from shardroute.telemetry import serve_prometheus

        serve_prometheus(args.metrics_port)
    return demo.main(
        args.duration,
        args.json,
        shards=args.shards,
        sessions=args.sessions,
        workers=args.workers,
        store=args.store,
        tls=args.tls,
        shard_bound=args.shard_bound,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardroute`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ShardRouteError as exc:
        print(f"shardroute: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console(
    argv: Sequence[str] | None = None, *, exit_grace_s: float = DEFAULT_EXIT_GRACE_S
) -> NoReturn:
    """The ``shardroute`` console script: :func:`main`, then exit with its code, within
    ``exit_grace_s`` of the command's end even if closing a connection hangs
    (:mod:`shardroute._exit_guard`)."""
    code = main(argv)
    sys.stdout.flush()
    exit_within(code, exit_grace_s)
    sys.exit(code)


if __name__ == "__main__":
    console()
