"""The ``shardroute scale-advice`` and ``shardroute rebalance`` commands
(docs/autoscaling.md), registered by :mod:`shardroute.cli`.

    shardroute scale-advice --etcd HOST:PORT --service NAME [--watch] [--json]
        [--interval S] [--queue-target N] [--slo-ms MS] [--target-utilisation U]
        [--horizon-s S] [--min-shards N] [--max-shards N] [--min-per-zone N]
        [--scale-down-window S] [--metrics-port PORT]
    shardroute rebalance --etcd HOST:PORT --service NAME [--max-moves-per-s N]
        [--max-moves N] [--dry-run] [TLS options]
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from typing import Any

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import ConfigError
from shardroute.scaling.advisor import ScalingAdvice, ScalingAdvisor
from shardroute.scaling.autoscaler import Autoscaler, DesiredShardsGauge
from shardroute.scaling.policies import (
    CostAwarePolicy,
    LatencyPolicy,
    PredictivePolicy,
    QueuePolicy,
    ScalingPolicy,
    UtilisationPolicy,
)
from shardroute.security.args import add_tls_args, control_token_from_args, tls_from_args

__all__ = ["add_commands", "advisor_from_args", "format_advice"]

SourceFactory = Callable[[argparse.Namespace], EtcdTopologySource]


def add_commands(
    commands: Any,
    add_etcd_args: Callable[[argparse.ArgumentParser], None],
    make_source: SourceFactory,
) -> None:
    """Add ``scale-advice`` and ``rebalance`` to the ``shardroute`` subcommands."""
    advice = commands.add_parser(
        "scale-advice", help="how many shards the service should run, and why"
    )
    add_etcd_args(advice)
    advice.add_argument("--watch", action="store_true", help="advise every --interval")
    advice.add_argument("--json", action="store_true", help="one JSON line per advice")
    advice.add_argument("--interval", type=float, default=15.0, help="seconds between advice")
    add_policy_args(advice)
    advice.add_argument(
        "--metrics-port",
        type=int,
        help="with --watch: serve shardroute_desired_shards{zone} at "
        "http://127.0.0.1:PORT/metrics (shardroute[otel])",
    )
    advice.set_defaults(func=lambda args: _cmd_scale_advice(args, make_source))
    rebalance = commands.add_parser(
        "rebalance", help="move sessions toward an even spread over the active shards"
    )
    add_etcd_args(rebalance)
    add_tls_args(rebalance)
    rebalance.add_argument("--max-moves-per-s", type=float, default=20.0, help="move rate cap")
    rebalance.add_argument("--max-moves", type=int, default=1000, help="move budget")
    rebalance.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    rebalance.set_defaults(func=lambda args: _cmd_rebalance(args, make_source))


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The advisor's options (shared by the commands that advise)."""
    parser.add_argument("--queue-target", type=float, default=2.0, help="queue per shard")
    parser.add_argument("--slo-ms", type=float, help="p95 turn duration SLO (latency policy)")
    parser.add_argument(
        "--target-utilisation", type=float, help="add the HPA utilisation policy at this target"
    )
    parser.add_argument(
        "--horizon-s", type=float, default=120.0, help="forecast horizon (>= shard start-up)"
    )
    parser.add_argument("--min-shards", type=int, default=1)
    parser.add_argument("--max-shards", type=int, default=64)
    parser.add_argument("--min-per-zone", type=int, default=0)
    parser.add_argument("--scale-down-window", type=float, default=300.0, help="seconds")


def advisor_from_args(args: argparse.Namespace) -> ScalingAdvisor:
    """The advisor the options describe: queue, latency (with ``--slo-ms``), utilisation
    (with ``--target-utilisation``), predictive and cost-aware."""
    policies: list[ScalingPolicy] = [QueuePolicy(args.queue_target)]
    if args.slo_ms is not None:
        policies.append(LatencyPolicy(args.slo_ms))
    if args.target_utilisation is not None:
        policies.append(UtilisationPolicy(args.target_utilisation))
    policies += [PredictivePolicy(horizon_s=args.horizon_s), CostAwarePolicy()]
    return ScalingAdvisor(
        policies,
        min_shards=args.min_shards,
        max_shards=args.max_shards,
        min_per_zone=args.min_per_zone,
        scale_down_window_s=args.scale_down_window,
    )


def format_advice(service: str, advice: ScalingAdvice) -> str:
    """The text ``scale-advice`` prints."""
    zones = " ".join(f"{z or '-'}={n}" for z, n in sorted(advice.per_zone.items()))
    lines = [
        f"{service}: {advice.current_shards} active -> {advice.desired_shards} desired "
        f"({advice.direction}), confidence {advice.confidence:.2f}",
        f"  per zone: {zones}",
    ]
    if advice.additions:
        adds = ", ".join(f"{z or '-'} ({c.value})" for z, c in advice.additions)
        lines.append(f"  add: {adds}")
    if advice.drain_order:
        lines.append(f"  drain, in order: {', '.join(advice.drain_order)}")
    lines += ["  because:", *(f"    {reason}" for reason in advice.reasons)]
    return "\n".join(lines)


def _cmd_scale_advice(args: argparse.Namespace, make_source: SourceFactory) -> int:
    if args.interval <= 0:
        raise ConfigError("--interval must be > 0")
    gauge = None
    if args.metrics_port is not None:
        from shardroute.telemetry import serve_prometheus

        serve_prometheus(args.metrics_port)
        gauge = DesiredShardsGauge()
    source = make_source(args)
    stop = threading.Event()
    try:
        source.start()
        scaler = Autoscaler(
            advisor_from_args(args), None, source, interval_s=args.interval, gauge=gauge
        )
        while True:
            advice = scaler.step()
            if args.json:
                print(json.dumps({"service": args.service, **advice.to_dict()}), flush=True)
            else:
                print(format_advice(args.service, advice), flush=True)
            if not args.watch:
                return 0
            stop.wait(args.interval)
    finally:
        source.close()


def _cmd_rebalance(args: argparse.Namespace, make_source: SourceFactory) -> int:
    from shardroute.etcd import EtcdClient
    from shardroute.scaling.rebalance import Rebalancer
    from shardroute.sessions.migrator import Migrator

    source = make_source(args)
    try:
        source.start()
        tls, token = tls_from_args(args), control_token_from_args(args)
        with Migrator(
            EtcdClient(source.options),
            args.service,
            source,
            close_etcd=True,
            tls=tls,
            control_token=token,
        ) as mover:
            result = Rebalancer(mover, tls=tls, control_token=token).run(
                max_moves=args.max_moves, max_moves_per_s=args.max_moves_per_s, dry_run=args.dry_run
            )
        print(json.dumps(result.to_dict()), flush=True)
        return 0 if not result.failed else 1
    finally:
        source.close()
