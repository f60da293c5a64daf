"""Zone loss: every shard of one zone SIGKILLed at once. Traffic moves to the other zone,
conversations continue with their history from the store, and when the zone returns
they do not bounce back (issue 14). Real etcd, real shard processes, a real client."""

from __future__ import annotations

from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.chaos import ChaosEnv, ZoneOutage
from shardroute.testing.cluster import ShardCluster


def test_a_lost_zone_moves_its_sessions_which_stay_when_it_returns(etcd_endpoint: str) -> None:
    kwargs = {"token_delay_s": 0}
    with ShardCluster(etcd_endpoint, shard_kwargs=kwargs, lease_ttl_s=2) as cluster:
        cluster.start(4)  # shard-0, shard-2 in zone-a; shard-1, shard-3 in zone-b
        client = ShardClient.connect(etcd_endpoint, "chat")
        try:
            chat = client.stub(chat_pb2_grpc.ChatStub)
            zone_of = {sid: cluster[sid].zone for sid in cluster.shard_ids}
            keys = [f"conv-{i}" for i in range(12)]
            prompts: dict[str, list[str]] = {key: [] for key in keys}

            def turns(rounds: int) -> dict[str, str]:
                """``rounds`` turns of every conversation; the shard that served each last."""
                served = {}
                for _ in range(rounds):
                    for key in keys:
                        prompt = f"{key}-{len(prompts[key]) + 1}"
                        request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=2)
                        tokens = list(chat.Generate(request, session_key=key, timeout=15))
                        prompts[key].append(prompt)
                        assert tokens[-1].turn == len(prompts[key]), (key, tokens[-1])
                        served[key] = tokens[-1].shard_id
                return served

            before = turns(2)
            lost_zone = "zone-a"
            in_lost_zone = [k for k in keys if zone_of[before[k]] == lost_zone]
            assert in_lost_zone, before
            target = next(sid for sid, zone in zone_of.items() if zone == lost_zone)
            outage = ZoneOutage()
            env = ChaosEnv(cluster, None, client)
            outage.apply(env, target)
            during = turns(2)  # no failed turn: a refused connection fails over
            assert all(zone_of[during[k]] == "zone-b" for k in keys), during
            outage.heal(env, target)  # the zone's shards are back, same ids
            client.source.wait_for(lambda t: set(outage.killed) <= set(t.shards), 15)
            after = turns(2)
            assert after == during  # nobody bounced back to the returned zone
            for key in keys:
                reply = chat.History(chat_pb2.HistoryRequest(), session_key=key, idempotent=True)
                assert [t.prompt for t in reply.turns] == prompts[key]
        finally:
            client.close()
