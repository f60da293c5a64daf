"""The first hour's commands as a user runs them (issue 16): ``shardroute etcd`` (a dev
etcd that starts, answers, compacts, stops on SIGTERM and keeps its data) and
``shardroute serve module:Class`` (a class from the working directory; a bad class is
one line and exit code 2, also for ``python -m shardroute.server.run``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dev_commands import SHARDROUTE, stop_process

from shardroute.client import ShardClient
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.testing import free_port
from shardroute.testing.counter import CounterStub, tags_of
from shardroute.testing.etcd import etcd_answers
from shardroute.testing.waiting import wait_until

MY_SHARD = """\
from shardroute.testing.counter import CounterShard


class MyShard(CounterShard):
    pass


def not_a_class():
    pass
"""


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _start_etcd(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SHARDROUTE, "etcd", "--port", str(port), "--peer-port", str(free_port())],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_dev_etcd_starts_answers_compacts_stops_and_keeps_its_data(tmp_path: Path) -> None:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = _start_etcd(tmp_path, port)
    try:
        wait_until(lambda: etcd_answers(endpoint), 30, "the dev etcd answering")
        (etcd_pid,) = _children(proc.pid)
        with open(f"/proc/{etcd_pid}/cmdline", "rb") as handle:
            flags = handle.read().decode().split("\0")
        assert "--auto-compaction-mode=periodic" in flags
        assert "--unsafe-no-fsync=false" in flags  # a dev etcd's data is kept: fsync on
        client = EtcdClient(EtcdOptions((endpoint,)))
        client.put("/tutorial/kept", b"yes")
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    data_dir = tmp_path / "shardroute-etcd.data"  # the documented default, in the cwd
    assert f"endpoint    {endpoint}" in out and str(data_dir) in out and "Ctrl-C" in out
    assert "stopped" in out and not os.path.exists(f"/proc/{etcd_pid}")
    assert not etcd_answers(endpoint)
    proc = _start_etcd(tmp_path, port)  # the same command again: the same data
    try:
        wait_until(lambda: etcd_answers(endpoint), 30, "the restarted dev etcd answering")
        client = EtcdClient(EtcdOptions((endpoint,)))
        assert client.get("/tutorial/kept") == b"yes"
        client.close()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        stop_process(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG, /proc")
def test_a_sigkill_of_the_dev_etcd_command_stops_its_etcd_too(tmp_path: Path) -> None:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = _start_etcd(tmp_path, port)
    etcd_pid = 0
    try:
        wait_until(lambda: etcd_answers(endpoint), 30, "the dev etcd answering")
        (etcd_pid,) = _children(proc.pid)
        proc.kill()  # no handler runs: only the kernel can tell etcd
        proc.communicate(timeout=10)
        wait_until(lambda: not _alive(etcd_pid), 30, "etcd stopping after its parent's SIGKILL")
        assert not etcd_answers(endpoint)
    finally:
        stop_process(proc)
        if etcd_pid and _alive(etcd_pid):  # the failure case: leave no etcd behind
            os.kill(etcd_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_dev_etcd_on_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [SHARDROUTE, "etcd", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "shardroute-etcd.data").exists()


@pytest.mark.parametrize(
    ("entry", "cls", "said"),
    [
        ("run", "my_shard:Nope", "no attribute 'Nope' (classes defined there: MyShard)"),
        ("serve", "my_shard:Nope", "no attribute 'Nope'"),
        ("serve", "missing_module:MyShard", "cannot import module 'missing_module'"),
        ("serve", "my_shard:not_a_class", "is a function, not a ShardServer"),
        ("serve", "my_shard", "must be 'module:Class'"),
    ],
)
def test_a_bad_class_is_one_line_and_exit_2(
    tmp_path: Path, entry: str, cls: str, said: str
) -> None:
    (tmp_path / "my_shard.py").write_text(MY_SHARD)
    if entry == "run":
        command = [sys.executable, "-m", "shardroute.server.run", "--class", cls]
    else:
        command = [SHARDROUTE, "serve", cls]
    done = subprocess.run(
        [*command, "--service", "counter", "--shard-id", "s1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_serve_runs_a_class_from_the_working_directory(tmp_path: Path, etcd_endpoint: str) -> None:
    """Like ``uvicorn module:app``: ``my_shard`` is importable only from the working
    directory. The session key ``a/b`` works from the client to that shard (issue 16,
    item 3: the client once passed it and the shard failed with UNKNOWN)."""
    (tmp_path / "my_shard.py").write_text(MY_SHARD)
    port = free_port()
    proc = subprocess.Popen(
        [SHARDROUTE, "serve", "my_shard:MyShard", "--etcd", etcd_endpoint,
         "--service", "counter", "--shard-id", "s1", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"READY 127.0.0.1:{port}\n"
        with ShardClient.connect(etcd_endpoint, "counter") as client:
            client.source.wait_for(lambda t: "s1" in t.shards, 10)
            counter = client.stub(CounterStub)
            assert counter.Add(b"x", session_key="a/b") == b"1"
            assert counter.Add(b"y", session_key="a/b") == b"2"
            assert tags_of(counter.Get(b"", session_key="a/b")) == ["x", "y"]
            assert tags_of(counter.Get(b"", session_key="a")) == []  # not the same session
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        stop_process(proc)


def _serve(tmp_path: Path, *options: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    (tmp_path / "my_shard.py").write_text(MY_SHARD)
    return subprocess.run(
        [SHARDROUTE, "serve", "my_shard:MyShard", "--service", "counter", "--shard-id", "s1",
         *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip


def test_serve_without_etcd_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A forgotten --etcd once served a shard no client could find (READY, no error)."""
    done = _serve(tmp_path, timeout=30)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and "no --etcd" in done.stderr, done.stderr
    assert "`shardroute etcd`" in done.stderr


def test_serve_on_a_taken_address_is_one_line_and_exit_2(
    tmp_path: Path, etcd_endpoint: str
) -> None:
    """Once gRPC's own log line came first, then ours with gRPC's advice."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = _serve(tmp_path, "--etcd", etcd_endpoint, "--listen", address)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"cannot listen on {address}" in done.stderr
    assert "--listen" in done.stderr and "GRPC_VERBOSITY" not in done.stderr


def test_serve_with_etcd_down_says_how_to_serve_anyway(tmp_path: Path) -> None:
    """The error named only the Python argument (wait_for_etcd=True); the command has its
    own option, and with it the shard serves and registers once etcd is up."""
    endpoint = f"127.0.0.1:{free_port()}"
    done = _serve(tmp_path, "--etcd", endpoint)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "--wait-for-etcd" in done.stderr, done.stderr
    shard = subprocess.Popen(
        [SHARDROUTE, "serve", "my_shard:MyShard", "--service", "counter", "--shard-id", "s1",
         "--etcd", endpoint, "--wait-for-etcd"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    etcd = _start_etcd(tmp_path, int(endpoint.rpartition(":")[2]))
    try:
        assert shard.stdout is not None
        assert shard.stdout.readline().startswith("READY ")
        wait_until(lambda: etcd_answers(endpoint), 30, "the dev etcd answering")
        client = EtcdClient(EtcdOptions((endpoint,)))
        try:
            wait_until(
                lambda: client.get("/shardroute/counter/shards/s1") is not None,
                30,
                "the shard registered once etcd answered",
            )
        finally:
            client.close()
    finally:
        stop_process(shard)
        stop_process(etcd)
