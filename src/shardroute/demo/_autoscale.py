"""``shardroute demo --autoscale``: chat traffic that ramps up, peaks and falls, over shards
that an :class:`~shardroute.scaling.Autoscaler` starts when its advice goes up and drains
(SIGTERM: sessions move first) when it goes down. The summary adds ``scale_ups``,
``scale_downs`` and ``max_shards`` to the usual ``lost_turns`` and ``errors``.

The schedule, as shares of the duration: workers (client threads, each with one turn in
flight at a time) ramp from 1 to ``workers`` over the first 35 %, stay there until 60 %,
then fall back to 1. The advisor: the HPA formula on utilisation (target 20 % of each
shard's 16 calls) and the queue policy, 2 to 6 shards, a scale-down window of 10 % of the
duration, a round every 0.5 s.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Any, TextIO

from shardroute.client import ShardClient
from shardroute.demo._config import CLIENT_ZONE, SERVICE, DemoConfig
from shardroute.demo._traffic import Tally, worker
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.scaling import (
    Autoscaler,
    QueuePolicy,
    Rebalancer,
    ScalingAdvisor,
    UtilisationPolicy,
)
from shardroute.sessions.migrator import Migrator
from shardroute.testing.actuator import LocalActuator
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer

__all__ = ["main", "run_autoscale_demo"]

SHARD_KWARGS = {"capacity": 16, "token_delay_s": 0.02}
MIN_SHARDS, MAX_SHARDS = 2, 6


def workers_at(share: float, peak: int) -> int:
    """Client threads wanted at ``share`` (0-1) of the run: ramp, peak, fall."""
    if share < 0.35:
        return max(1, round(1 + (peak - 1) * share / 0.35))
    if share < 0.6:
        return peak
    return max(1, round(peak - (peak - 1) * min(1.0, (share - 0.6) / 0.25)))


def run_autoscale_demo(config: DemoConfig, *, live: TextIO | None = sys.stdout) -> dict[str, Any]:
    """Run the autoscaling demo; returns the summary."""
    tally = Tally()
    advisor = ScalingAdvisor(
        [UtilisationPolicy(target=0.2), QueuePolicy(2.0)],
        min_shards=MIN_SHARDS,
        max_shards=MAX_SHARDS,
        scale_down_window_s=max(2.0, config.duration_s * 0.1),
    )
    stops: list[threading.Event] = []
    threads: list[threading.Thread] = []
    max_shards = 0
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        etcd = cleanup.enter_context(EtcdServer())
        cluster = cleanup.enter_context(
            ShardCluster(etcd.endpoint, service=SERVICE, shard_kwargs=SHARD_KWARGS)
        )
        cluster.start(MIN_SHARDS)
        client = cleanup.enter_context(
            ShardClient.connect(etcd.endpoint, SERVICE, zone=CLIENT_ZONE)
        )
        actuator = LocalActuator(cluster, shard_kwargs=SHARD_KWARGS)
        etcd_client = EtcdClient(EtcdOptions((etcd.endpoint,)))
        mover = cleanup.enter_context(Migrator(etcd_client, SERVICE, cluster.source))
        cleanup.callback(etcd_client.close)
        rebalancer = Rebalancer(mover)
        scaler = Autoscaler(
            advisor, actuator, cluster.source, interval_s=0.5, rebalancer=rebalancer
        )
        cleanup.callback(scaler.close)
        scaler.start()
        t0 = time.monotonic()
        end = t0 + config.duration_s
        while (now := time.monotonic()) < end:
            wanted = workers_at((now - t0) / config.duration_s, max(2, config.workers))
            while len(stops) < wanted:
                stops.append(threading.Event())
                seed = config.seed + len(stops)
                threads.append(
                    threading.Thread(
                        target=worker,
                        args=(client, config, tally, stops[-1], seed),
                        daemon=True,
                    )
                )
                threads[-1].start()
            while len(stops) > wanted:
                stops.pop().set()
            topology = client.source.current()
            active = sum(1 for s in topology.shards.values() if s.available)
            max_shards = max(max_shards, active)
            if live is not None:
                advice = scaler.advice
                why = advice.reasons[0] if advice and advice.reasons else "-"
                live.write(
                    f"t={now - t0:5.1f}s workers={wanted:2d} shards={active} "
                    f"desired={advice.desired_shards if advice else '-'} "
                    f"turns={tally.turns} lost_turns={tally.lost_turns} | {why}\n"
                )
                live.flush()
            time.sleep(0.5)  # not an Event.wait: Ctrl-C lands here (see _run.py)
        scaler.close()
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(15)
        for shard_id in actuator.drained:  # let the drains finish: their sessions move
            with contextlib.suppress(Exception):
                cluster.wait_exit(shard_id, timeout=30)
        with tally.lock:
            summary: dict[str, Any] = {
                "requests": tally.turns + tally.errors,
                "errors": tally.errors,
                "lost_turns": tally.lost_turns,
                "turns_retried": tally.retried,
                "sessions_migrated": len(tally.moved),
                "scale_ups": scaler.scale_ups,
                "scale_downs": scaler.scale_downs,
                "sessions_rebalanced": scaler.sessions_rebalanced,
                "max_shards": max_shards,
                "shards_at_end": len(cluster.shard_ids),
                "added": list(actuator.added),
                "drained": list(actuator.drained),
                "last_advice": list(scaler.advice.reasons) if scaler.advice else [],
                "turns_by_shard": dict(sorted(tally.served.items())),
                "duration_s": round(time.monotonic() - t0, 2),
            }
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


def main(duration_s: float, as_json: bool, **overrides: Any) -> int:
    """Entry point of ``shardroute demo --autoscale``."""
    config = DemoConfig(duration_s=duration_s, **overrides)
    summary = run_autoscale_demo(config, live=None if as_json else sys.stdout)
    if as_json:
        print(json.dumps(summary, separators=(",", ":")), flush=True)
    else:
        print("summary: " + json.dumps(summary, indent=2), flush=True)
    return 0
