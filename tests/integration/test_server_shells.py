"""The sync and asyncio shard servers against one suite (issue 10: the shells must not
drift). Each test runs on both: the asyncio server on an event loop of its own thread,
driven through the same calls."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from shells import Shell

from shardroute._proto import shard_pb2
from shardroute.errors import ServerLifecycleError
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.server import ServerState
from shardroute.sessions.migrator import control_stub


@pytest.fixture
def shell(kind: str) -> Iterator[Shell]:
    shell = Shell(kind, shard_id="s1", service="chat", etcd=None, token_delay_s=0.0)
    yield shell
    shell.close()


def generate(address: str, key: str, max_tokens: int = 3) -> list[Any]:
    with grpc.insecure_channel(address) as channel:
        chat = chat_pb2_grpc.ChatStub(channel)
        request = chat_pb2.GenerateRequest(session_key=key, prompt="hi", max_tokens=max_tokens)
        return list(chat.Generate(request, timeout=20))


def test_serves_then_stop_is_idempotent_and_final(shell: Shell) -> None:
    shell.do("start")
    assert shell.server.state is ServerState.SERVING
    tokens = generate(shell.server.address, "k")
    assert tokens[-1].turns_held == 1
    shell.do("stop")
    shell.do("stop")
    assert shell.server.state is ServerState.STOPPED
    assert shell.do("wait", 0) is True
    with pytest.raises(ServerLifecycleError):
        shell.do("start")


def test_stop_before_start_stops_for_good(shell: Shell) -> None:
    shell.do("stop")
    shell.do("stop")
    assert shell.server.state is ServerState.STOPPED
    with pytest.raises(ServerLifecycleError):
        shell.do("start")


def test_wait_before_start_is_refused(shell: Shell) -> None:
    with pytest.raises(ServerLifecycleError, match="before start"):
        shell.do("wait", 0.1)


def test_drain_warns_about_calls_still_running_at_the_end_of_the_grace(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    shell = Shell(kind, shard_id="slow", service="chat", etcd=None, token_delay_s=0.1)
    try:
        shell.do("start")
        errors: list[BaseException] = []

        def long_call() -> None:
            try:
                generate(shell.server.address, "slow-session", max_tokens=40)  # ~4 s
            except grpc.RpcError as exc:  # cut short by the stop after the grace
                errors.append(exc)

        caller = threading.Thread(target=long_call)
        caller.start()
        deadline = time.monotonic() + 10
        while not shell.server.accounting.inflight:  # wait until the call is running
            assert time.monotonic() < deadline, "the long call never started"
            time.sleep(0.01)
        with caplog.at_level(logging.WARNING, logger="shardroute.server"):
            shell.do("drain", 0.3)
        caller.join(30)
        assert shell.server.state is ServerState.STOPPED
        assert any("still in flight at the end of the grace" in r.message for r in caplog.records)
    finally:
        shell.close()


def test_begin_drain_twice_runs_one_drain(shell: Shell, caplog: pytest.LogCaptureFixture) -> None:
    shell.do("start")
    with caplog.at_level(logging.INFO, logger="shardroute.server"):
        shell.begin_drain(0.5)
        shell.begin_drain(0.5)
        assert shell.do("wait", 20) is True
    drains = [r for r in caplog.records if "draining" in r.message]
    assert len(drains) == 1
    assert shell.server.state is ServerState.STOPPED


@pytest.mark.parametrize("grace", [math.nan, math.inf])
def test_a_drain_rpc_with_a_grace_that_is_not_finite_is_refused(shell: Shell, grace: float) -> None:
    # Issue 13: NaN passed the old `grace_s <= 0` test and became the drain's deadline.
    shell.do("start")
    with (
        grpc.insecure_channel(shell.server.address) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        control_stub(channel).Drain(shard_pb2.DrainRequest(grace_s=grace), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "finite" in info.value.details()  # type: ignore[attr-defined]
    assert shell.server.state is ServerState.SERVING  # nothing changed
