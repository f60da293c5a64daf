"""A command that finished ends its process even when teardown hangs (_exit_guard)."""

from __future__ import annotations

import subprocess
import sys
import time

# A command that fails fast (no etcd on port 1: exit code 2), with a non-daemon thread
# that never ends left behind: without the guard the interpreter waits for it for ever.
SCRIPT = """
import threading
from shardroute.cli import console
threading.Thread(target=threading.Event().wait).start()
console(["topology", "--etcd", "127.0.0.1:1", "--service", "x", "--timeout", "0.2"],
        exit_grace_s=1.0)
"""


def test_a_hang_after_the_command_ends_the_process_with_its_code() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2  # the command's own code, not a crash's
    assert time.monotonic() - started < 30
    assert "cannot reach etcd" in result.stderr  # the command's message came first
    assert "did not exit within 1 s" in result.stderr
    # every thread's stack, for a bug report: the main thread waiting in _shutdown for
    # the stuck one, the stuck one, and the guard
    assert "in _shutdown" in result.stderr
    assert result.stderr.count("Thread 0x") >= 2 and "Current thread" in result.stderr


def test_a_command_that_exits_cleanly_says_nothing_more() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardroute.cli",
            "topology",
            "--etcd",
            "127.0.0.1:1",
            "--service",
            "x",
            "--timeout",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "did not exit" not in result.stderr
    assert result.stderr.count("\n") == 1
