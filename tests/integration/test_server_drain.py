"""Graceful drain: draining in etcd and health, in-flight streams finish, then gone.

Every test runs on both shells (``ShardServer`` and ``AsyncShardServer``)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shells import Shell

from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.examples.chat import CHAT_SERVICE, chat_pb2, chat_pb2_grpc
from shardroute.model import ShardState
from shardroute.server import ServerState

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_drain_marks_draining_lets_streams_finish_then_deregisters(
    etcd_endpoint: str, kind: str
) -> None:
    shell = Shell(kind, shard_id="d", service="chat", etcd=etcd_endpoint, token_delay_s=0.02)
    server = shell.server
    words = [f"w{i}" for i in range(60)]
    with (
        shell.start(),
        EtcdTopologySource(etcd_endpoint, "chat") as source,
        grpc.insecure_channel(server.address) as channel,
    ):
        source.wait_for(lambda t: "d" in t.shards)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", CHAT_SERVICE):
            check = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert check.status == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == SERVING

        stream = chat_pb2_grpc.ChatStub(channel).Generate(
            chat_pb2.GenerateRequest(session_key="s", prompt=" ".join(words), max_tokens=100)
        )
        next(stream)
        drainer = shell.in_thread("drain", 10.0)
        source.wait_for(lambda t: "d" in t.shards and t.shard("d").state is ShardState.DRAINING)
        assert next(watch).status == NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=CHAT_SERVICE)).status == (
            NOT_SERVING
        )
        assert server.state is ServerState.DRAINING
        rest = list(stream)  # the in-flight stream is served to its end
        assert stream.code() is grpc.StatusCode.OK and len(rest) == 4 + len(words) - 1
        source.wait_for(lambda t: "d" not in t.shards and "d" not in t.loads)
        drainer.join(10)
        assert shell.do("wait", 5) and server.state is ServerState.STOPPED


def test_drain_rpc_begins_a_drain_and_the_server_stops(etcd_endpoint: str, kind: str) -> None:
    with Shell(kind, shard_id="r", service="chat", etcd=etcd_endpoint).start() as shell:
        with grpc.insecure_channel(shell.server.address) as channel:
            control = shard_pb2_grpc.ShardControlStub(channel)
            reply = control.Drain(shard_pb2.DrainRequest(grace_s=2.0))
        assert reply.state == shard_pb2.SHARD_STATE_DRAINING
        assert shell.do("wait", 10)


def test_session_calls_on_an_unknown_session_answer_not_found(kind: str) -> None:
    with (
        Shell(kind, shard_id="u", service="chat", etcd=None).start() as shell,
        grpc.insecure_channel(shell.server.address) as channel,
    ):
        control = shard_pb2_grpc.ShardControlStub(channel)
        for call in (
            lambda: control.WarmSession(shard_pb2.WarmSessionRequest(session_key="a")),
            lambda: list(control.ExportSession(shard_pb2.ExportSessionRequest(session_key="a"))),
        ):
            try:
                call()
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND
                assert "'a'" in (exc.details() or "")
            else:
                raise AssertionError("expected NOT_FOUND")
        chat = chat_pb2_grpc.ChatStub(channel)
        list(chat.Generate(chat_pb2.GenerateRequest(session_key="b", prompt="hi")))
        listed = control.ListSessions(shard_pb2.ListSessionsRequest())
        assert [s.session_key for s in listed.sessions] == ["b"]
        assert listed.sessions[0].state_bytes > 0 and not listed.next_page_token
