"""Fresher load (issue 14): a load report in etcd older than the max age stops counting,
and the load a shard attaches to each response (its trailer) reaches the client's
routing view before any etcd report does.

Real etcd, real chat shard processes, real clients (sync and asyncio)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from shardroute import metadata
from shardroute.aio import AsyncShardClient
from shardroute.client import ShardClient
from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import LoadReport
from shardroute.routing import Decision, Reason
from shardroute.session_keys import wire_form
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.waiting import wait_until

BLOCKERS = 7
"""Long calls held on the home shard outside the client under test: with capacity 64,
7 are above the spill floor (6) and the bounded-load share, so the home is full, and
below the step (16) at which the shard writes a new etcd report on its own."""


@pytest.fixture
def cluster(etcd_endpoint: str) -> Iterator[ShardCluster]:
    with ShardCluster(etcd_endpoint, shard_kwargs={"token_delay_s": 0.05}) as c:
        c.start(3)
        yield c


def routed_on_report(client: ShardClient, key: str, home: str, ts: float) -> Decision | None:
    """The decision for ``key`` on a snapshot whose etcd report for ``home`` is the one
    written with ``ts`` (None while the client has not seen it, or the shard replaced it
    meanwhile)."""
    topology = client.source.current()
    report = topology.loads.get(home)
    if report is None or report.ts != ts:
        return None
    decision = client.route(key)
    return decision if client.source.current() is topology else None


def test_stale_load_reports_are_ignored(
    cluster: ShardCluster, etcd: EtcdClient, schema: KeySchema
) -> None:
    client = ShardClient.connect(cluster.etcd_endpoint, "chat")
    try:
        key = "conv-stale"
        home = client.route(key).shard.id
        found: list[Decision] = []

        def routed(ts: float) -> bool:
            decision = routed_on_report(client, key, home, ts)
            if decision is not None:
                found.append(decision)
            return decision is not None

        # an operator's (or a frozen shard's) report, an hour old: the home is "full"
        old = time.time() - 3600
        etcd.put(schema.load(home), json.dumps({"inflight": 1000, "ts": old}).encode())
        wait_until(lambda: routed(old), what="the stale report in the client's topology")
        assert client.source.current().loads[home].inflight == 1000  # seen...
        assert (found[-1].shard.id, found[-1].reason) == (home, Reason.AFFINITY)  # ...ignored
        assert client.router.load(home) == 0

        # control: the same report with a fresh ts counts, and the session spills
        fresh = time.time()
        etcd.put(schema.load(home), json.dumps({"inflight": 1000, "ts": fresh}).encode())
        wait_until(lambda: routed(fresh), what="the fresh report in the client's topology")
        assert found[-1].shard.id != home and found[-1].reason is Reason.SPILL
        assert client.router.load(home) == 1000
    finally:
        client.close()


def homed_at(client: ShardClient | AsyncShardClient, home: str, prefix: str) -> list[str]:
    """Session keys whose home is ``home`` (whatever its load)."""
    return [k for k in (f"{prefix}-{i}" for i in range(500)) if client.route(k).home.id == home]


class Blockers:
    """``BLOCKERS`` long Generate calls on sessions homed at ``home``, on a plain gRPC
    channel (so the client under test has none of them in flight)."""

    def __init__(self, client: ShardClient | AsyncShardClient, home: str) -> None:
        shard = client.source.current().shards[home]
        self.channel = grpc.insecure_channel(shard.address)
        chat = chat_pb2_grpc.ChatStub(self.channel)
        keys = homed_at(client, home, "blocker")
        self.started = threading.Semaphore(0)
        self.threads = [
            threading.Thread(target=self._hold, args=(chat, k)) for k in keys[:BLOCKERS]
        ]
        assert len(self.threads) == BLOCKERS

    def _hold(self, chat: chat_pb2_grpc.ChatStub, key: str) -> None:
        request = chat_pb2.GenerateRequest(prompt="hold", max_tokens=120)  # ~6 s
        md = ((metadata.SESSION_KEY, wire_form(key)),)
        for n, _ in enumerate(chat.Generate(request, metadata=md, timeout=30)):
            if n == 0:
                self.started.release()

    def __enter__(self) -> Blockers:
        for thread in self.threads:
            thread.start()
        for _ in self.threads:
            assert self.started.acquire(timeout=10), "a blocker did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join()
        self.channel.close()


def trailer_in_view(client: ShardClient | AsyncShardClient, home: str) -> LoadReport | None:
    """The report the client routes on for ``home`` if it is the shard's trailer."""
    base, _, view = client.load_board.state  # the source's snapshot, and the one routed on
    assert base is not None
    used = view.loads.get(home)  # the etcd report object itself, or a trailer's
    return used if used is not None and used is not base.loads.get(home) else None


def test_trailer_load_is_used(cluster: ShardCluster) -> None:
    client = ShardClient.connect(cluster.etcd_endpoint, "chat")
    try:
        chat = client.stub(chat_pb2_grpc.ChatStub)
        key = "conv-trailer"
        decision = client.route(key)
        home = decision.shard.id
        assert decision.reason is Reason.AFFINITY
        # a session pinned to the home: its calls go there whatever the home's load
        probe = homed_at(client, home, "probe")[0]
        client.router.remember(probe, home)
        found: list[LoadReport] = []

        def spilled_on_trailer() -> bool:
            chat.History(chat_pb2.HistoryRequest(), session_key=probe, timeout=10)
            if client.route(key).shard.id == home:
                return False
            used = trailer_in_view(client, home)  # not an etcd report written meanwhile
            if used is not None:
                found.append(used)
            return used is not None

        with Blockers(client, home):
            wait_until(spilled_on_trailer, timeout=10, what="a spill on the home's trailer")
            assert found[-1].inflight == BLOCKERS
            assert client.inflight.count(home) == 0  # not this client's own calls
    finally:
        client.close()


def test_trailer_load_is_used_by_the_asyncio_client(cluster: ShardCluster) -> None:
    async def run() -> LoadReport | None:
        client = await AsyncShardClient.connect(cluster.etcd_endpoint, "chat")
        try:
            chat = client.stub(chat_pb2_grpc.ChatStub)
            key = "conv-trailer-aio"
            home = client.route(key).shard.id
            probe = homed_at(client, home, "probe")[0]
            client.router.remember(probe, home)
            blockers.append(Blockers(client, home))
            ready.set()
            await asyncio.to_thread(go.wait, 30)
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "no spill on the home's trailer load"
                await chat.History(chat_pb2.HistoryRequest(), session_key=probe, timeout=10)
                if client.route(key).shard.id != home:
                    used = trailer_in_view(client, home)
                    if used is not None:
                        return used
        finally:
            await client.close()

    ready, go = threading.Event(), threading.Event()
    blockers: list[Blockers] = []
    result: list[LoadReport | None] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(run())))
    runner.start()
    assert ready.wait(30)
    with blockers[0]:
        go.set()
        runner.join()
    assert result and result[0] is not None and result[0].inflight == BLOCKERS
