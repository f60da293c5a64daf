"""Issue 16: what an operator sees of a drain and a stop. One summary line per drain and
per stop, with counts and plain reasons (not one WARNING per session); ``shardroute
drain`` prints the counts the Drain call returns and exits 3 when sessions were left
behind. Both shells, real etcd, real shards."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest
from shells import Shell

from shardroute.client import ShardClient
from shardroute.errors import MigrationConflict
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import Override, Topology
from shardroute.server.drain import EXIT_LEFT_BEHIND, move_reason
from shardroute.sessions import Migrator, OverrideStore

CLI = [sys.executable, "-m", "shardroute.cli"]
SERVER_LOGGERS = ("shardroute.server", "shardroute.migration", "shardroute.sessions")


def chat_shard(kind: str, etcd: str, shard_id: str, **kwargs: Any) -> Shell:
    return Shell(kind, shard_id=shard_id, service="chat", etcd=etcd, token_delay_s=0, **kwargs)


def drain_command(etcd: str, shard_id: str) -> subprocess.CompletedProcess[str]:
    """``shardroute drain`` of ``shard_id``, as an operator runs it."""
    command = [*CLI, "drain", "--etcd", etcd, "--service", "chat", "--shard", shard_id]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def open_sessions(client: ShardClient, shard_id: str, keys: list[str]) -> None:
    chat = client.stub(chat_pb2_grpc.ChatStub)
    for key in keys:
        client.router.remember(key, shard_id)  # steer the conversation to shard_id
        tokens = list(chat.Generate(chat_pb2.GenerateRequest(prompt=key), session_key=key))
        assert tokens[-1].shard_id == shard_id


def server_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(SERVER_LOGGERS) and r.levelno >= level]


def test_a_drain_with_nowhere_to_go_logs_one_line_then_one_stop_line(
    etcd_endpoint: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = [f"alone-{n}" for n in range(30)]
    shell = chat_shard(kind, etcd_endpoint, "solo")
    with shell.start(), ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client:
        client.source.wait_for(lambda t: "solo" in t.shards, 10)
        with caplog.at_level(logging.INFO):
            open_sessions(client, "solo", keys)
        assert not server_records(caplog, logging.INFO)  # a new session is no news
        caplog.clear()
        with caplog.at_level(logging.INFO):
            shell.do("drain", 10.0)

    summary = shell.server.last_drain
    assert (summary.held, summary.moved, summary.not_moved, summary.failed) == (30, 0, 30, 0)
    warnings = server_records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # not one per session
    line = warnings[0].getMessage()
    assert "0 of 30 sessions moved" in line and "30 not moved, 0 failed" in line
    assert "30 because no other active shard could take it" in line
    assert "no data is lost" in line and "start a shard of this service" in line
    stopped = [r.getMessage() for r in server_records(caplog, logging.INFO) if "stopped" in r.msg]
    assert len(stopped) == 1 and "of the 30 sessions it held, its drain moved 0" in stopped[0]
    assert "each saved in the session store" in stopped[0]
    logged = [r.getMessage() for r in server_records(caplog, logging.INFO)]
    assert not any(key in line for line in logged for key in keys)  # detail: DEBUG only


def test_drain_command_prints_counts_and_exits_3_when_a_move_lost_a_race(
    etcd_endpoint: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = [f"race-{n}" for n in range(6)]
    a, b = (chat_shard(kind, etcd_endpoint, name) for name in "ab")
    etcd = EtcdClient(EtcdOptions((etcd_endpoint,)))
    with (
        a.start(),
        b.start(),
        ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client,
    ):
        try:
            client.source.wait_for(lambda t: {"a", "b"} <= set(t.shards), 10)
            open_sessions(client, "a", keys)
            # Another mover holds the fence of one session: the drain's move of it loses.
            overrides = OverrideStore(etcd, "chat")
            current = overrides.get("race-0")
            epoch = current.epoch if current is not None else 0
            overrides.swap("race-0", current, Override("a", epoch + 1, moving_to="b"))
        finally:
            etcd.close()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            drained = drain_command(etcd_endpoint, "a")
            assert a.do("wait", 30)

    assert drained.returncode == EXIT_LEFT_BEHIND, drained.stderr
    assert "5 of 6 sessions moved" in drained.stdout, drained.stdout
    assert "0 not moved, 1 failed; no data is lost" in drained.stdout
    warnings = [r.getMessage() for r in server_records(caplog, logging.WARNING)]
    drain_lines = [m for m in warnings if "shard a drain:" in m]
    assert len(drain_lines) == len(warnings) == 1, warnings
    assert "1 because another mover or shard changed its owner first" in drain_lines[0]
    # The programmer's chain (the StaleState/MigrationConflict text) stays at DEBUG.
    assert not any("Read it again" in m or "race-0" in m for m in warnings)


def drain_to_a_peer(kind: str, etcd: str, keys: list[str]) -> subprocess.CompletedProcess[str]:
    """``shardroute drain`` of shard a, holding ``keys``, with shard b to move them to."""
    a, b = (chat_shard(kind, etcd, name) for name in "ab")
    with a.start(), b.start(), ShardClient.connect(etcd, "chat", timeout=30) as client:
        client.source.wait_for(lambda t: {"a", "b"} <= set(t.shards), 10)
        open_sessions(client, "a", keys)
        drained = drain_command(etcd, "a")
        assert a.do("wait", 30)
    return drained


def test_drain_command_exits_0_when_every_session_moved(etcd_endpoint: str, kind: str) -> None:
    drained = drain_to_a_peer(kind, etcd_endpoint, [f"calm-{n}" for n in range(4)])
    assert drained.returncode == 0, drained.stderr
    assert "4 of 4 sessions moved" in drained.stdout and "0 not moved, 0 failed" in drained.stdout


def test_the_race_of_issue_16_is_one_plain_sentence(etcd_endpoint: str) -> None:
    """The real race: another writer sets the override between the mover's read and its
    fence (here from the mover's own routing view, called in between, on real etcd)."""
    a, b = (chat_shard("sync", etcd_endpoint, name) for name in "ab")
    etcd = EtcdClient(EtcdOptions((etcd_endpoint,)))
    with a.start(), b.start(), ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client:
        client.source.wait_for(lambda t: {"a", "b"} <= set(t.shards), 10)
        open_sessions(client, "a", ["sess-054"])
        overrides = OverrideStore(etcd, "chat")
        assert overrides.get("sess-054") is None  # at its ring home: "expected no override"

        def another_writer_first() -> Topology:
            overrides.swap("sess-054", None, Override("a", 1))
            return client.source.current()

        mover = Migrator(etcd, "chat", client.source, routing_view=another_writer_first)
        try:
            with pytest.raises(MigrationConflict) as raised:
                mover.migrate("sess-054")
        finally:
            mover.close()
            etcd.close()
    message = str(raised.value)
    assert message.startswith("session 'sess-054' changed hands while this move started")
    assert "nothing was changed" in message and message.count("sess-054") == 1  # not nested
    assert "Read it again" not in message and "expected no override" not in message
    assert move_reason(raised.value) == (True, "another mover or shard changed its owner first")


def test_drain_command_says_when_sessions_left_behind_end_with_the_shard(
    etcd_endpoint: str, kind: str
) -> None:
    """A shard on an in-memory session store fills ``DrainResponse.store_in_process``:
    ``shardroute drain`` no longer promises that its sessions left behind are whole."""
    keys = [f"mem-{n}" for n in range(3)]
    shell = chat_shard(kind, etcd_endpoint, "solo", session_store="memory")
    with shell.start(), ShardClient.connect(etcd_endpoint, "chat", timeout=30) as client:
        client.source.wait_for(lambda t: "solo" in t.shards, 10)
        open_sessions(client, "solo", keys)
        drained = drain_command(etcd_endpoint, "solo")
        assert shell.do("wait", 30)
    assert drained.returncode == EXIT_LEFT_BEHIND, drained.stderr
    assert "0 of 3 sessions moved" in drained.stdout, drained.stdout
    assert "the 3 sessions left behind end with the shard" in drained.stdout
    assert "no data is lost" not in drained.stdout


@pytest.mark.parametrize("slow_part", ["before the counts", "after the counts"])
def test_a_slow_drain_reply_still_reaches_the_command(
    etcd_endpoint: str, kind: str, monkeypatch: pytest.MonkeyPatch, slow_part: str
) -> None:
    """The shard stops once its moves ended; a Drain call slow to answer (its threads
    late under load: 2 of 1,300 runs) was cancelled by the stop, and ``shardroute
    drain`` said the shard "did not take the drain (UNAVAILABLE: Cancelling all
    calls)". The stop now gives a Drain call that began before it up to REPLY_GRACE_S
    once the counts are ready, whether the call is late to read them or to send them."""
    from shardroute.server.control import ControlAnswers

    answer = ControlAnswers.drain_reply

    def slow(self: ControlAnswers, *args: Any) -> Any:
        if slow_part == "before the counts":
            time.sleep(0.5)  # the drain moves and goes on to stop the server meanwhile
        reply = answer(self, *args)
        if slow_part == "after the counts":
            time.sleep(0.5)
        return reply

    monkeypatch.setattr(ControlAnswers, "drain_reply", slow)
    drained = drain_to_a_peer(kind, etcd_endpoint, [f"slow-{n}" for n in range(3)])
    assert drained.returncode == 0, drained.stderr
    assert "3 of 3 sessions moved" in drained.stdout, drained.stdout
