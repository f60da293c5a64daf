"""A checkpoint that finds the session store unreachable is retried on the shard, within
the call's deadline and ``checkpoint_retry_s`` (issue 14): etcd killed (SIGKILL) and
started again while a turn waits to save costs that turn nothing, streaming (its tokens
already delivered, so the client could not retry it) or unary; an outage longer than the
cap fails the turn with a clear error and loses nothing saved. Real etcd, real shards
(both shells), a real client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import pytest
from shells import KINDS, Shell

from shardroute import ShardClient, ShardRouteError
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.examples.chat._sessions import CHAT_CODEC
from shardroute.sessions import JsonCodec
from shardroute.testing import EtcdServer
from shardroute.testing.counter import AsyncCounterShard, CounterShard, CounterStub, tags_of
from shardroute.testing.waiting import wait_until

COUNTERS = {"sync": CounterShard, "asyncio": AsyncCounterShard}


class GatedCodec:
    """A codec whose ``encode`` (the first step of a checkpoint) waits at a gate while
    it is closed, so a test can take the store away just before a turn saves."""

    def __init__(self, base: Any) -> None:
        self._base = base
        self.reached = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def close(self) -> None:
        self.reached.clear()
        self.gate.clear()

    def encode(self, state: Any) -> bytes:
        self.reached.set()
        assert self.gate.wait(30), "the test never opened the gate"
        data: bytes = self._base.encode(state)
        return data

    def decode(self, data: bytes) -> Any:
        return self._base.decode(data)

    def empty(self) -> Any:
        return self._base.empty()


def _chat(client: ShardClient, key: str, prompt: str) -> list[str]:
    """One streaming turn; the prompts of the session's history after it."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=4)
    tokens = list(chat.Generate(request, session_key=key, timeout=30))
    assert len(tokens) == 4
    history = chat.History(chat_pb2.HistoryRequest(), session_key=key, idempotent=True)
    return [turn.prompt for turn in history.turns]


def _add(client: ShardClient, key: str, tag: str) -> list[str]:
    """One unary turn; the session's tags after it."""
    counter = client.stub(CounterStub)
    count = int(counter.Add(tag.encode(), session_key=key, timeout=30))
    tags = tags_of(counter.Get(b"", session_key=key, idempotent=True))
    assert count == len(tags)
    return tags


Turn = Callable[[ShardClient, str, str], list[str]]


@pytest.fixture(params=["streaming", "unary"])
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _shard(
    kind: str, service: str, etcd: str, codec: GatedCodec, retry_s: float
) -> tuple[Shell, str, Turn]:
    common: dict[str, Any] = {
        "shard_id": "a",
        "etcd": etcd,
        "session_codec": codec,
        "checkpoint_retry_s": retry_s,
    }
    if service == "streaming":
        shell = Shell(kind, service="chat", token_delay_s=0, **common)
        return shell, "chat", _chat
    return Shell(kind, cls=COUNTERS[kind], service="counter", **common), "counter", _add


@pytest.fixture
def gated(kind: str, service: str) -> GatedCodec:
    return GatedCodec(CHAT_CODEC if service == "streaming" else JsonCodec())


@pytest.fixture
def connected(
    kind: str, service: str, etcd_server: EtcdServer, gated: GatedCodec, request: Any
) -> Iterator[tuple[Shell, ShardClient, Turn]]:
    retry_s = getattr(request, "param", 20.0)
    shell, name, turn = _shard(kind, service, etcd_server.endpoint, gated, retry_s)
    client = ShardClient.connect(etcd_server.endpoint, name)
    try:
        shell.start()
        client.source.wait_for(lambda t: "a" in t.shards)
        assert turn(client, "conv", "first") == ["first"]
        yield shell, client, turn
    finally:
        client.close()
        shell.close()


def _kill_at_checkpoint(
    pool: futures.Executor, etcd: EtcdServer, gated: GatedCodec, send: Callable[[], Any]
) -> futures.Future[Any]:
    """Send a turn, kill etcd once the turn starts its checkpoint, then let it save."""
    gated.close()
    pending = pool.submit(send)
    assert gated.reached.wait(15), "the turn never reached its checkpoint"
    etcd.kill()
    gated.gate.set()
    return pending


def test_a_checkpoint_caught_by_an_etcd_restart_is_retried_and_saved(
    connected: tuple[Shell, ShardClient, Turn], etcd_server: EtcdServer, gated: GatedCodec
) -> None:
    shell, client, turn = connected
    host = shell.server.sessions
    with futures.ThreadPoolExecutor(1) as pool:
        pending = _kill_at_checkpoint(
            pool, etcd_server, gated, lambda: turn(client, "conv", "second")
        )
        wait_until(lambda: host.checkpoint_retries_total >= 1, 15, "the checkpoint retried")
        assert not pending.done()  # waiting for the store, not failed
        etcd_server.start()
        assert pending.result(60) == ["first", "second"]
    assert host.checkpoints_total == 2  # saved once each: the retry did not write twice
    assert turn(client, "conv", "third") == ["first", "second", "third"]


@pytest.mark.parametrize("connected", [1.0], indirect=True)
def test_a_store_down_longer_than_the_cap_fails_the_turn_and_loses_nothing(
    connected: tuple[Shell, ShardClient, Turn], etcd_server: EtcdServer, gated: GatedCodec
) -> None:
    shell, client, turn = connected
    host = shell.server.sessions
    with futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = _kill_at_checkpoint(
            pool, etcd_server, gated, lambda: turn(client, "conv", "second")
        )
        with pytest.raises(ShardRouteError, match="turn not saved") as failed:
            pending.result(60)
        waited = time.monotonic() - started
    assert "session store unreachable" in str(failed.value)
    assert host.checkpoint_retries_total >= 1
    assert waited >= 1.0  # retried for the whole cap before giving up
    assert host.checkpoints_total == 1  # the failed turn wrote nothing
    etcd_server.start()
    # Nothing saved was lost, and the failed turn left no trace: the next one follows.
    assert turn(client, "conv", "third") == ["first", "third"]
