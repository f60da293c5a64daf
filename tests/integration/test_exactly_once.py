"""Exactly-once turns across failover (issue 14): a turn id recorded with the checkpoint
answers a retried turn instead of applying it twice. Real etcd, real counter shard
processes, SIGKILL; a real client."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import grpc
import pytest

from shardroute import CallFailed, RetryPolicy, ShardClient, ShardRouteError
from shardroute.metadata import TURN_ID
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.counter import (
    ASYNC_COUNTER_SHARD_CLASS,
    COUNTER_SHARD_CLASS,
    CounterStub,
    tags_of,
)
from shardroute.testing.waiting import wait_until


@pytest.fixture
def counter_class() -> str:
    return COUNTER_SHARD_CLASS


@pytest.fixture
def counters(etcd_endpoint: str, counter_class: str) -> Iterator[ShardCluster]:
    cluster = ShardCluster(
        etcd_endpoint, server_class=counter_class, service="counter", lease_ttl_s=2
    )
    with cluster:
        cluster.start(3)
        yield cluster


def test_every_acknowledged_increment_applies_once_under_sigkills(
    counters: ShardCluster, etcd_endpoint: str
) -> None:
    """Four threads add tagged increments to eight sessions while shards are SIGKILLed at
    random points (and replaced): no call fails, and every session holds each
    acknowledged tag exactly once (a turn in flight on the killed shard was retried under
    its turn id: applied once, whether or not its checkpoint had been written)."""
    rng = random.Random()
    retry = RetryPolicy(max_attempts=4, exactly_once=True)
    client = ShardClient.connect(etcd_endpoint, "counter", retry=retry, timeout=20.0)
    counter = client.stub(CounterStub)
    acked: dict[str, list[str]] = {f"count-{i}": [] for i in range(8)}
    errors: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()
    total = [0]

    def add(keys: list[str]) -> None:
        n = 0
        while not done.is_set():
            key = keys[n % len(keys)]
            tag = f"{key}:{n}"
            try:
                count = int(counter.Add(tag.encode(), session_key=key))
            except ShardRouteError as exc:  # any failed call fails the test
                errors.append(exc)
                return
            with lock:
                acked[key].append(tag)
                if count != len(acked[key]):  # an increment applied twice (or lost)
                    errors.append(AssertionError(f"{key}: count {count} after {acked[key]}"))
                    return
                total[0] += 1
            n += 1

    keys = list(acked)
    workers = [threading.Thread(target=add, args=(keys[i::4],)) for i in range(4)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(3):  # three kills, each after a random amount of traffic
            target = total[0] + rng.randint(10, 60)
            wait_until(lambda t=target: total[0] >= t or errors, 60, "traffic before a kill")
            victim = rng.choice(counters.shard_ids)
            counters.kill(victim)
            added = counters.add()
            client.source.wait_for(lambda t, a=added: a in t.shards, 20)
        after = total[0] + 40
        wait_until(lambda: total[0] >= after or errors, 60, "traffic after the kills")
    finally:
        done.set()
        for worker in workers:
            worker.join(60)
    try:
        assert errors == []
        for key, tags in acked.items():
            stored = tags_of(counter.Get(b"", session_key=key, idempotent=True))
            assert stored == tags, key  # each acknowledged increment once, in order
    finally:
        client.close()


@pytest.mark.parametrize("counter_class", [COUNTER_SHARD_CLASS, ASYNC_COUNTER_SHARD_CLASS])
def test_a_retried_turn_id_is_answered_from_the_record_after_migration_and_failover(
    counters: ShardCluster, etcd_endpoint: str
) -> None:
    client = ShardClient.connect(etcd_endpoint, "counter", timeout=20.0)
    counter = client.stub(CounterStub)
    key = "once"

    def add(tag: str, turn_id: str) -> bytes:
        reply: bytes = counter.Add(tag.encode(), session_key=key, metadata=[(TURN_ID, turn_id)])
        return reply

    try:
        with pytest.raises(CallFailed, match="invalid turn id") as info:
            add("x", "not a turn id!")
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert add("a", "turn.1") == b"1"  # the refused call ran nothing
        assert add("b", "turn.1") == b"1"  # the same turn again: the recorded reply
        moved = client.migrate(key)  # the record moves with the state
        assert moved.target != moved.source
        assert add("c", "turn.1") == b"1"
        assert add("d", "turn.2") == b"2"
        counters.kill(moved.target)  # the next shard loads state and record from the store
        client.source.wait_for(lambda t: moved.target not in t.shards, 20)
        assert add("e", "turn.2") == b"2"
        assert add("f", "turn.1") == b"1"
        assert tags_of(counter.Get(b"", session_key=key, idempotent=True)) == ["a", "d"]
    finally:
        client.close()
