"""Shards, clients and movers on a real 3-member etcd cluster while its leader, then a
follower, is killed under live conversations (``EtcdLeaderLoss``, ``EtcdMemberLoss``;
issue 14, "A real etcd cluster")."""

from __future__ import annotations

from pathlib import Path

from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.chaos import ChaosEnv, ChaosRunner, EtcdLeaderLoss, EtcdMemberLoss
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd_cluster import EtcdCluster

SESSIONS = 4


def test_leader_then_follower_killed_under_traffic(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    endpoints = ",".join(etcd_cluster.endpoints)  # as --etcd takes them
    with ShardCluster(endpoints, service="cluster-chat", log_dir=tmp_path / "shards") as shards:
        shards.start(3)
        client = ShardClient.connect(endpoints, "cluster-chat", timeout=10)
        try:
            client.source.wait_for(lambda t: set(shards.shard_ids) <= set(t.shards), 10)
            chat = client.stub(chat_pb2_grpc.ChatStub)
            for key in ("moved-before", "moved-after"):  # a session exists once it answered
                list(chat.Generate(chat_pb2.GenerateRequest(prompt="hi"), session_key=key))
            before = client.migrate("moved-before")  # the mover's etcd client exists now
            env = ChaosEnv(shards, None, client, etcd_cluster=etcd_cluster)
            runner = ChaosRunner(env, sessions=SESSIONS)
            leader_loss, follower_loss = runner.run([EtcdLeaderLoss(), EtcdMemberLoss()])
            print(leader_loss.as_dict(), follower_loss.as_dict(), sep="\n")
            assert runner.lost_turns() == 0
            # A follower lost: nobody notices.
            assert follower_loss.failed_turns_by_cause == {}, follower_loss.failure_examples
            # The leader lost: routing, watches and registrations go on through the
            # election; the only turns that fail are checkpoints that were on their way
            # to etcd when it died (their outcome unknown to etcd's client, so the shard
            # reports "turn not saved"), at most a few per conversation.
            causes = leader_loss.failed_turns_by_cause
            assert set(causes) <= {"CallFailed(UNAVAILABLE)"}, leader_loss.failure_examples
            for example in leader_loss.failure_examples.values():
                assert "session store unreachable; turn not saved" in example
            assert sum(causes.values()) <= 2 * SESSIONS, leader_loss
            for result in (leader_loss, follower_loss):
                assert result.converged_s is not None, result
            # Shards stayed registered, the client follows etcd, the mover still moves.
            topology = client.source.current()
            assert set(shards.shard_ids) <= set(topology.shards)
            assert client.source.staleness() == 0.0
            after = client.migrate("moved-after")
            assert after.target != after.source and before.target != before.source
        finally:
            client.close()
