"""docs/tutorial.md, run as a reader runs it (issue 16): its files (code blocks with a
``title="name"``) are written to a temp folder and its ``bash`` blocks run there in
order: the long-running ones (``shardroute etcd``, ``shardroute serve``) as processes,
the others to completion; each client run's output must be the output block shown after
it. Two changes keep the test off shared resources: etcd's port is a free one instead
of 2379, and the ``kill -9 $(pgrep ...)`` of a shard kills this test's own process."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from dev_commands import SHARDROUTE, stop_process

from shardroute.testing import free_port
from shardroute.testing.etcd import etcd_answers
from shardroute.testing.waiting import wait_until

TUTORIAL = Path(__file__).parents[2] / "docs" / "tutorial.md"
DOC_ENDPOINT = "127.0.0.1:2379"
BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.S | re.M)


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "shardroute":
        return [SHARDROUTE, *argv[1:]]
    raise AssertionError(f"the tutorial runs a command this test does not know: {command}")


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    text = TUTORIAL.read_text()
    assert DOC_ENDPOINT in text
    endpoint = f"127.0.0.1:{free_port()}"
    blocks = [
        (lang, title, body.replace(DOC_ENDPOINT, endpoint))
        for lang, title, body in BLOCK.findall(text)
    ]
    processes: dict[str, subprocess.Popen[str]] = {}
    ran: list[str] = []
    client_output: list[str] = []
    try:
        for n, (lang, title, body) in enumerate(blocks):
            if title and title != "output":
                (tmp_path / title).write_text(body)
                continue
            if lang != "bash":
                continue
            command = body.strip()
            if command.startswith("pip install"):
                continue  # the test environment has the packages
            if command.startswith("kill -9"):
                (shard_id,) = re.findall(r"shard-id (\w+)", command)
                processes[shard_id].send_signal(signal.SIGKILL)
                processes[shard_id].wait(30)
                ran.append(f"kill {shard_id}")
                continue
            argv = _argv(command)
            if argv[1] == "etcd":
                argv += ["--port", endpoint.rpartition(":")[2], "--peer-port", str(free_port())]
                processes["etcd"] = subprocess.Popen(argv, cwd=tmp_path, text=True)
                wait_until(lambda: etcd_answers(endpoint), 30, "the tutorial's etcd answering")
                ran.append("etcd")
            elif argv[1] == "serve":
                shard_id = argv[argv.index("--shard-id") + 1]
                shard = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
                processes[shard_id] = shard
                assert shard.stdout is not None
                assert shard.stdout.readline().startswith("READY "), f"{shard_id} did not start"
                ran.append(f"serve {shard_id}")
            else:
                done = subprocess.run(
                    argv, cwd=tmp_path, capture_output=True, text=True, timeout=120
                )
                assert done.returncode == 0, f"{command}: {done.stderr}"
                if argv[1] == "client.py":
                    lang_next, title_next, shown = blocks[n + 1]
                    assert (lang_next, title_next) == ("text", "output")
                    assert done.stdout == shown, f"{command}: {done.stdout} != {shown}"
                    client_output.append(done.stdout)
                ran.append(argv[1])
    finally:
        for process in reversed(processes.values()):  # the shards, then etcd
            stop_process(process)
    assert ran == [
        "-m", "etcd", "serve s1", "serve s2", "serve s3", "client.py", "kill s2", "client.py"
    ]  # fmt: skip
    assert client_output[-1].endswith("every counter is at 20\n")  # nothing lost
