"""Issue 9: session checkpoints against etcd's space, on real etcd and a real shard.

A chat shard whose etcd runs out of space refuses the turn before its last reply with a
message that says so, loses no answered turn, and resumes once the space is recovered;
10,000 checkpoints through the real store stay under a small bound with the embedded
etcd's default compaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from chat_calls import history, turn

from shardroute.client import ShardClient
from shardroute.errors import EtcdNoSpace, ShardRouteError
from shardroute.examples.chat import ChatShard
from shardroute.sessions import EtcdSessionStore, StoredState
from shardroute.testing.etcd import EtcdServer

MiB = 1024 * 1024


@pytest.fixture
def tiny_etcd() -> Iterator[EtcdServer]:
    with EtcdServer(quota_backend_bytes=16 * MiB, auto_compaction=None) as server:
        yield server


def test_nospace_refuses_the_turn_clearly_and_loses_nothing(tiny_etcd: EtcdServer) -> None:
    shard = ChatShard(shard_id="s1", service="chat", etcd=tiny_etcd.endpoint, token_delay_s=0)
    shard.start()
    etcd = tiny_etcd.client()
    try:
        with ShardClient.connect(tiny_etcd.endpoint, "chat", timeout=10) as client:
            client.source.wait_for(lambda t: "s1" in t.shards, 10)
            answered = [f"p{i}" for i in range(3)]
            for prompt in answered:
                turn(client, "conv", prompt)
            filler = 0
            with pytest.raises(EtcdNoSpace):  # fill etcd as a runaway writer would
                while filler < 1000:
                    etcd.put(f"/filler/{filler % 4}", b"x" * MiB)
                    filler += 1
            with pytest.raises(ShardRouteError) as info:
                turn(client, "conv", "refused")
            message = str(info.value)
            assert "turn not saved" in message and "out of space" in message
            assert history(client, "conv") == answered  # reads go on; nothing lost

            etcd.delete_prefix("/filler/")
            etcd.recover_space()  # compact, defragment, disarm (docs/operations.md)
            assert etcd.alarms() == []
            reply = turn(client, "conv", "after recovery")
            assert reply.turns_held == 4
            assert history(client, "conv") == [*answered, "after recovery"]
    finally:
        etcd.close()
        shard.stop()


def test_ten_thousand_checkpoints_stay_small_with_default_compaction() -> None:
    """250 conversations of 40 turns (~150 B each), ended when done, as the demo runs:
    the database stays small, and once etcd compacted, what it holds in use is back to
    a fraction of what was written (uncompacted, in use grows with every write: ~8 MB)."""
    with EtcdServer() as server:  # the embedded defaults: periodic compaction
        etcd = server.client()
        try:
            store = EtcdSessionStore(etcd, "chat", ttl_s=60)
            peak = 0
            for conversation in range(250):
                key = f"conv-{conversation}"
                state: StoredState | None = None
                turns: list[list[str]] = []
                for n in range(40):
                    turns.append([f"prompt {n} " * 3, f"reply {n} " * 10])
                    data = json.dumps(turns).encode()
                    state = store.checkpoint(key, data, owner="s1", previous=state)
                assert store.load(key) == state
                store.delete(key)
                if conversation % 25 == 24:
                    peak = max(peak, etcd.status().db_size)
            assert store.bytes_written > 3 * MiB  # the run wrote several MB ...
            assert peak < 16 * MiB  # ... the db file stayed small ...
            deadline = time.monotonic() + 20
            in_use = etcd.status().db_size_in_use
            while in_use is None or in_use > 1.5 * MiB:  # ... and compaction frees it
                assert time.monotonic() < deadline, f"still {in_use} bytes in use"
                time.sleep(0.5)
                in_use = etcd.status().db_size_in_use
        finally:
            etcd.close()
