"""Issue 12: after a shard returns, `shardroute rebalance` (and Rebalancer) bring max/avg
sessions per shard to <= 1.25 with no lost turn (real etcd, real chat shard processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from chat_calls import history, turn_retried

from shardroute.client import ShardClient
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.scaling.rebalance import Rebalancer, imbalance
from shardroute.sessions.migrator import Migrator
from shardroute.testing.cluster import ShardCluster


@pytest.fixture
def cluster(etcd_endpoint: str) -> Iterator[ShardCluster]:
    with ShardCluster(etcd_endpoint, shard_kwargs={"token_delay_s": 0}, lease_ttl_s=2) as c:
        yield c.start(2)


def all_turns(client: ShardClient, turns: dict[str, int]) -> None:
    for key in sorted(turns):
        turns[key] += 1
        token, _ = turn_retried(client, key, f"p{turns[key]}")
        assert token.turn == turns[key], key


def test_a_returned_shard_is_rebalanced_without_losing_a_turn(
    cluster: ShardCluster, etcd_endpoint: str
) -> None:
    turns = {f"conv-{i}": 0 for i in range(40)}
    with ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client:
        all_turns(client, turns)
        zone = cluster["shard-0"].zone
        cluster.kill("shard-0")
        cluster.wait_for(lambda t: "shard-0" not in t.shards)
        all_turns(client, turns)  # the survivor takes shard-0's sessions over
        cluster.add("shard-0", zone=zone)  # back under the same id
        all_turns(client, turns)
        with Migrator(EtcdClient(EtcdOptions((etcd_endpoint,))), "chat", cluster.source) as mover:
            rebalancer = Rebalancer(mover)
            topology = cluster.source.current()
            before = {s: len(h) for s, h in rebalancer.held(topology).items()}
            assert imbalance(before) > 1.25, before  # the take-overs stayed pinned

            dry = subprocess.run(
                [
                    *(sys.executable, "-m", "shardroute.cli", "rebalance"),
                    *("--etcd", etcd_endpoint, "--service", "chat", "--dry-run"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert dry.returncode == 0, dry.stderr
            plan = json.loads(dry.stdout)
            assert plan["dry_run"] and plan["moved"] == 0 and plan["moves"]
            assert plan["before"] == before and plan["imbalance_after"] <= 1.25

            result = rebalancer.run(max_moves_per_s=50)
            assert result.failed == {} and result.moved == len(result.planned) > 0
            assert {m.target for m in result.planned} == {"shard-0"}
            after = {s: len(h) for s, h in rebalancer.held(cluster.source.current()).items()}
        assert imbalance(after) <= 1.25, after
        assert sum(after.values()) == len(turns)
        all_turns(client, turns)  # every conversation goes on, nothing lost
        for key in sorted(turns)[::7]:
            assert history(client, key) == [f"p{n}" for n in range(1, turns[key] + 1)]
