"""A shard server registers its record and load report under one lease, and leaves.

Every test runs on both shells (``ShardServer`` and ``AsyncShardServer``)."""

from __future__ import annotations

import json
import logging
import socket
import time

import grpc
import pytest
from shells import Shell

from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.errors import EtcdUnavailable
from shardroute.etcd import EtcdClient
from shardroute.model import ShardState
from shardroute.server import AsyncShardServer, ServerState, ShardServer
from shardroute.testing.etcd import EtcdServer, free_port
from shardroute.testing.waiting import wait_until


def test_record_and_load_report_appear_under_one_lease(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema, kind: str
) -> None:
    shell = Shell(
        kind,
        shard_id="s1",
        service="chat",
        etcd=etcd_endpoint,
        zone="eu-1a",
        region="eu",
        weight=2.0,
        capacity=16,
        labels={"gpu": "a100"},
    )
    server = shell.server
    assert server.state is ServerState.CREATED and server.address == ""  # no I/O yet
    shell.do("start")
    with EtcdTopologySource(etcd_endpoint, "chat") as source:
        topology = source.wait_for(lambda t: "s1" in t.shards and "s1" in t.loads)
        shard = topology.shard("s1")
        assert shard.address == server.address == f"127.0.0.1:{server.port}"
        assert (shard.zone, shard.region, shard.weight, shard.capacity) == ("eu-1a", "eu", 2, 16)
        assert shard.state is ShardState.ACTIVE and dict(shard.labels) == {"gpu": "a100"}
        report = topology.load("s1")
        assert report is not None and report.inflight == 0 and report.ts > 0
        record = json.loads(etcd.get(schema.shard("s1")) or b"{}")
        assert record["address"] == server.address
        # Both keys hang on the same lease: revoking it removes both.
        lease = server._registrar.lease_id  # type: ignore[union-attr]
        assert lease is not None
        etcd.revoke_lease(lease)
        source.wait_for(lambda t: "s1" not in t.shards and "s1" not in t.loads)
        # ... and the keep-alive notices the lost lease and registers again.
        source.wait_for(lambda t: "s1" in t.shards and "s1" in t.loads, timeout=10)
    shell.close()
    assert etcd.get(schema.shard("s1")) is None  # stop() deregistered
    assert etcd.get(schema.load("s1")) is None
    assert server.state is ServerState.STOPPED


def test_stop_is_idempotent_and_a_stopped_server_cannot_restart(
    etcd_endpoint: str, kind: str
) -> None:
    cls = ShardServer if kind == "sync" else AsyncShardServer
    shell = Shell(kind, cls=cls, shard_id="s1", service="chat", etcd=etcd_endpoint)
    shell.do("start")
    shell.do("stop")
    shell.do("stop", 1.0)
    assert shell.do("wait", 0)
    with pytest.raises(RuntimeError, match="start"):
        shell.do("start")
    shell.close()


def test_etcd_unreachable_at_start_fails_fast_with_a_clear_error(kind: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cls = ShardServer if kind == "sync" else AsyncShardServer
    shell = Shell(kind, cls=cls, shard_id="s1", service="chat", etcd=dead, etcd_timeout_s=2.0)
    server = shell.server
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable, match=r"could not register in etcd.*wait_for_etcd=True"):
        shell.do("start")
    assert time.monotonic() - started < 5
    assert server.state is ServerState.STOPPED
    # The port was released: nothing listens there any more.
    with (
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        pytest.raises(grpc.FutureTimeoutError),
    ):
        grpc.channel_ready_future(channel).result(timeout=0.3)


def test_wait_for_etcd_serves_at_once_and_registers_when_etcd_comes_up(
    etcd_server: EtcdServer, kind: str
) -> None:
    etcd_server.stop()
    shell = Shell(
        kind,
        shard_id="s1",
        service="chat",
        etcd=etcd_server.endpoint,
        wait_for_etcd=True,
        etcd_timeout_s=1.0,
    )
    server = shell.server
    shell.do("start")
    try:
        with grpc.insecure_channel(server.address) as channel:
            status = shard_pb2_grpc.ShardControlStub(channel).GetStatus(
                shard_pb2.GetStatusRequest(), timeout=5
            )
            assert status.state == shard_pb2.SHARD_STATE_ACTIVE
        etcd_server.start()
        with EtcdTopologySource(etcd_server.endpoint, "chat") as source:
            source.wait_for(lambda t: "s1" in t.shards, timeout=15)
    finally:
        shell.close()


def test_an_etcd_outage_is_one_warning_and_one_recovery_line_not_one_per_retry(
    etcd_server: EtcdServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "shardroute.server")
    endpoint = etcd_server.endpoint
    shell = Shell(kind, shard_id="s1", service="chat", etcd=endpoint, etcd_timeout_s=0.5)

    def lines(words: str, level: int) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "shardroute.server" and r.levelno == level and words in r.getMessage()
        ]

    shell.do("start")
    try:
        etcd_server.stop()
        retried = lambda: len(lines("etcd still unreachable", logging.DEBUG)) >= 2  # noqa: E731
        wait_until(retried, 30, "two retries of the registrar while etcd is down")
        etcd_server.start()
        wait_until(lambda: lines("reached etcd again", logging.INFO), 20, "the recovery line")
    finally:
        shell.close()
    outage = lines("cannot reach etcd", logging.WARNING)
    assert len(outage) == 1, outage
    assert "no data is at risk" in outage[0] and "check that etcd is reachable" in outage[0]
    assert len(lines("reached etcd again", logging.INFO)) == 1


def test_get_status_answers_identity_state_and_load(etcd_endpoint: str, kind: str) -> None:
    shell = Shell(kind, shard_id="s9", service="chat", etcd=etcd_endpoint, zone="z", capacity=5)
    shell.do("start")
    s = shell.server
    try:
        with grpc.insecure_channel(s.address) as channel:
            stub = shard_pb2_grpc.ShardControlStub(channel)
            status = stub.GetStatus(shard_pb2.GetStatusRequest())
    finally:
        shell.close()
    assert (status.shard_id, status.service, status.address) == ("s9", "chat", s.address)
    assert (status.zone, status.capacity, status.state) == ("z", 5, shard_pb2.SHARD_STATE_ACTIVE)
    assert status.load.ts > 0


def test_a_shard_listens_on_an_ipv6_host(etcd_endpoint: str, kind: str) -> None:
    """``host="::1"`` (``shardroute serve --listen [::1]:0``) binds and registers
    ``[::1]:port`` (gRPC was given ``::1:0`` before: "Misformatted domain name")."""
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("this machine has no IPv6 loopback")
    shell = Shell(kind, shard_id="s6", service="chat", etcd=etcd_endpoint, host="::1", port=0)
    shell.do("start")
    s = shell.server
    try:
        assert s.address == f"[::1]:{s.port}"
        with grpc.insecure_channel(s.address) as channel:
            status = shard_pb2_grpc.ShardControlStub(channel).GetStatus(
                shard_pb2.GetStatusRequest(), timeout=10
            )
    finally:
        shell.close()
    assert status.address == s.address
