"""``shardroute demo --chaos``: chat conversations over local shards while faults are
applied one after the other (:mod:`shardroute.testing.chaos`): a network partition
between the client and a shard (a black hole, then healed), a slow shard (0.1 s more
each way), a shard SIGKILLed and started again, a shard SIGSTOPped then resumed, the
embedded etcd killed and restarted, etcd's history compacted. The shards run behind
TCP proxies for the network faults (:func:`~shardroute.testing.chaos.add_proxied_shards`).
With ``--etcd-cluster`` etcd is an embedded 3-member cluster
(:class:`~shardroute.testing.etcd_cluster.EtcdCluster`) that everyone reaches on all
three endpoints, and the loss of its leader (``EtcdLeaderLoss``) comes before the restart
of the whole cluster.

The summary has one entry per fault (the time until the client stopped sending to the
faulty shard, the time to converge after the heal, the turns that failed by cause, turn
p99 against steady state), then ``lost_turns``, ``failed_turns`` and ``errors`` by
cause over the whole run.

Each fault is held for an eighth of ``--duration`` (at least 3 s: longer than the ~2 s a
client takes to notice a stopped shard). Steady state is measured, and things settle after
each fault has converged, for a twentieth of it (at most 1 s).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from typing import Any, TextIO

from shardroute.client import ShardClient
from shardroute.demo._config import EXACTLY_ONCE, SERVICE
from shardroute.testing.chaos import (
    ChaosEnv,
    ChaosRunner,
    Compaction,
    EtcdLeaderLoss,
    EtcdRestart,
    Fault,
    Kill,
    Partition,
    SlowShard,
    Stop,
    add_proxied_shards,
)
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.etcd_cluster import EtcdCluster

__all__ = ["main", "run_chaos_demo"]

SHARD_KWARGS = {"token_delay_s": 0.002}
SLOW_S = 0.1
"""The slow shard's added latency, each way."""


def run_chaos_demo(
    duration_s: float,
    *,
    sessions: int = 8,
    live: TextIO | None = sys.stdout,
    etcd_cluster: bool = False,
) -> dict[str, Any]:
    """Run the chaos demo; returns the summary. ``etcd_cluster``: etcd as 3 members, and
    the loss of the leader among the faults."""
    hold = max(3.0, duration_s / 8)
    settle = min(1.0, duration_s / 20)
    # The network faults first: a shard the kill restarts is no longer behind its proxy.
    faults: list[Fault] = [
        Partition(hold_s=hold),
        SlowShard(SLOW_S, hold_s=hold),
        Kill(),
        Stop(hold),
        *([EtcdLeaderLoss(hold_s=hold)] if etcd_cluster else []),
        EtcdRestart(hold),
        Compaction(),
    ]
    with contextlib.ExitStack() as cleanup:
        members: EtcdCluster | None = None
        etcd: EtcdServer | None = None
        if etcd_cluster:
            members = cleanup.enter_context(EtcdCluster())
            endpoints = members.endpoints
        else:
            etcd = cleanup.enter_context(EtcdServer())
            endpoints = (etcd.endpoint,)
        cluster = cleanup.enter_context(
            ShardCluster(",".join(endpoints), service=SERVICE, shard_kwargs=SHARD_KWARGS)
        )
        proxies = add_proxied_shards(cluster, 3)
        for proxy in proxies.values():
            cleanup.callback(proxy.close)
        client = cleanup.enter_context(ShardClient.connect(endpoints, SERVICE, retry=EXACTLY_ONCE))
        env = ChaosEnv(cluster, etcd, client, etcd_cluster=members, proxies=proxies)
        runner = ChaosRunner(env, sessions=sessions, steady_s=settle)
        if live is not None:
            names = ", ".join(fault.name for fault in faults)
            where = "a 3-member etcd cluster" if etcd_cluster else "one etcd"
            print(f"{sessions} conversations over 3 shards, {where}; faults: {names}", file=live)
        results = runner.run(faults)
        lost = runner.lost_turns()
    if live is not None:
        for result in results:
            print(f"{result.name}: {json.dumps(result.as_dict())}", file=live, flush=True)
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result.failed_turns_by_cause)
    return {
        "faults": [result.as_dict() for result in results],
        "turns": sum(result.turns for result in results),
        "lost_turns": lost,
        "lost_examples": dict(runner.lost_examples),
        "failed_turns": sum(errors.values()),
        "errors": dict(errors),
    }


def main(duration_s: float, as_json: bool, *, sessions: int = 8, etcd_cluster: bool = False) -> int:
    """Entry point of ``shardroute demo --chaos [--etcd-cluster]``; exit code 1 when a
    turn was lost."""
    live = None if as_json else sys.stdout
    summary = run_chaos_demo(duration_s, sessions=sessions, live=live, etcd_cluster=etcd_cluster)
    if as_json:
        print(json.dumps(summary, separators=(",", ":")), flush=True)
    else:
        print("summary: " + json.dumps(summary, indent=2), flush=True)
    return 1 if summary["lost_turns"] else 0
