"""Active health checks (issue 14, "optional active health checks on the standard gRPC
health service for shards this client uses"): a wedged shard is ejected by a client that
sends it nothing, a resumed one is taken back, a draining shard (NOT_SERVING) and a
server without the health service are never ejected.

Real etcd and real chat shard processes; real gRPC servers on loopback for the answers a
shard never gives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shardroute import AsyncShardClient, HealthChecks, OutlierDetector, ShardClient
from shardroute.errors import ConfigError
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import Shard
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.waiting import wait_until
from shardroute.transport.health import HealthChecker

CHECKS = HealthChecks(interval_s=0.2, timeout_s=0.2, unhealthy_threshold=2)


@pytest.fixture
def cluster(etcd_endpoint: str) -> Iterator[ShardCluster]:
    # A lease long enough that a stopped shard stays in the topology for the whole test:
    # what ejects it is the checks, not its record going away.
    with ShardCluster(
        etcd_endpoint, zones=("zone-a",), lease_ttl_s=10, shard_kwargs={"token_delay_s": 0}
    ) as c:
        c.start(2)
        yield c


def _touch_every_shard(client: ShardClient, count: int) -> None:
    """One turn on a session homed on each shard, so the client has a channel to each."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    seen: set[str] = set()
    n = 0
    while len(seen) < count:
        key = f"health-{n}"
        n += 1
        home = client.route(key).shard.id
        if home in seen:
            continue
        list(chat.Generate(chat_pb2.GenerateRequest(prompt="hi", max_tokens=1), session_key=key))
        seen.add(home)


def test_a_stopped_shard_is_ejected_without_any_call_and_taken_back_when_resumed(
    cluster: ShardCluster, etcd_endpoint: str
) -> None:
    checked = ShardClient.connect(
        etcd_endpoint,
        "chat",
        health_checks=CHECKS,
        outlier=OutlierDetector(base_ejection_s=0.5, max_ejection_s=0.5),
    )
    passive = ShardClient.connect(etcd_endpoint, "chat")  # the control: no checks
    try:
        for client in (checked, passive):
            _touch_every_shard(client, 2)
        victim = cluster.shard_ids[0]
        key = next(f"k-{n}" for n in range(1000) if checked.route(f"k-{n}").shard.id == victim)
        calls = checked.stats.snapshot().get("calls", 0)
        assert checked.outlier.ejected() == frozenset()

        cluster.stop(victim)
        stopped = time.monotonic()
        wait_until(lambda: victim in checked.outlier.ejected(), 5, "the stopped shard ejected")
        ejected_after = time.monotonic() - stopped
        # No call was sent: the checks alone found it. The client without checks, which
        # sent nothing either, still counts the shard as healthy.
        assert checked.stats.snapshot().get("calls", 0) == calls
        assert victim not in passive.outlier.ejected()
        # About interval * threshold + timeout (0.6 s here), with room for a busy machine.
        assert ejected_after < 3.0
        assert checked.route(key).shard.id != victim
        assert passive.route(key).shard.id == victim

        cluster.resume(victim)
        wait_until(lambda: victim not in checked.outlier.ejected(), 5, "the shard taken back")
        checker = checked._core.health_checker
        assert checker is not None
        rounds = checker.rounds
        wait_until(lambda: checker.rounds >= rounds + 3, 5, "three more rounds")
        assert checked.outlier.ejected() == frozenset()  # it answers: not ejected again
    finally:
        checked.close()
        passive.close()


def test_the_asyncio_client_checks_too(cluster: ShardCluster, etcd_endpoint: str) -> None:
    async def main() -> None:
        client = await AsyncShardClient.connect(etcd_endpoint, "chat", health_checks=CHECKS)
        async with client:
            chat = client.stub(chat_pb2_grpc.ChatStub)
            victim = cluster.shard_ids[1]
            key = next(f"a-{n}" for n in range(1000) if client.route(f"a-{n}").shard.id == victim)
            request = chat_pb2.GenerateRequest(prompt="hi", max_tokens=1)
            async for _ in chat.Generate(request, session_key=key):
                pass
            cluster.stop(victim)
            try:  # the checks run in their own thread, not on this event loop
                await asyncio.to_thread(
                    wait_until, lambda: victim in client.outlier.ejected(), 5, "ejected"
                )
            finally:
                cluster.resume(victim)

    asyncio.run(main())


class _Server:
    """A real gRPC server on loopback: with a health service in a given status, or none."""

    def __init__(self, status: int | None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        if status is not None:
            servicer = health.HealthServicer()
            servicer.set("", status)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.shard = Shard(f"s{port}", f"127.0.0.1:{port}")

    def close(self) -> None:
        self.server.stop(0)


@pytest.mark.parametrize(
    "status", [health_pb2.HealthCheckResponse.NOT_SERVING, None], ids=["not_serving", "none"]
)
def test_an_answer_of_any_kind_is_not_an_ejection(status: int | None) -> None:
    # NOT_SERVING is what a draining shard answers (its sessions are moving: ejecting it
    # would send their calls elsewhere mid-move); None: no health service at all.
    server = _Server(status)
    outlier = OutlierDetector()
    checker = HealthChecker(CHECKS, outlier, shards=lambda: [server.shard], make_channel=_channel)
    try:
        wait_until(lambda: checker.rounds >= 4, 5, "four rounds")
        assert outlier.ejected() == frozenset()
    finally:
        checker.close()
        server.close()


def test_a_shard_that_never_answers_is_ejected_and_reported() -> None:
    # A listening socket that never speaks HTTP/2: every check runs out its timeout.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    shard = Shard("mute", f"127.0.0.1:{silent.getsockname()[1]}")
    outlier = OutlierDetector()
    reported: list[tuple[str, str]] = []
    checker = HealthChecker(
        CHECKS,
        outlier,
        shards=lambda: [shard],
        make_channel=_channel,
        on_ejection=lambda shard_id, cause: reported.append((shard_id, cause)),
    )
    try:
        wait_until(lambda: "mute" in outlier.ejected(), 5, "the mute shard ejected")
        assert reported == [("mute", "health_check")]
    finally:
        checker.close()
        silent.close()


def _channel(shard: Shard) -> grpc.Channel:
    return grpc.insecure_channel(shard.address)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 0}, "interval_s"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"interval_s": 0.1, "timeout_s": 0.2}, "must not exceed interval_s"),
        ({"unhealthy_threshold": 0}, "unhealthy_threshold"),
        ({"unhealthy_threshold": True}, "unhealthy_threshold"),
        ({"service": 3}, "service"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HealthChecks(**kwargs)  # type: ignore[arg-type]


def test_a_client_refuses_something_else_as_health_checks(etcd_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="HealthChecks"):
        ShardClient.connect(etcd_endpoint, "chat", health_checks={"interval_s": 1})
