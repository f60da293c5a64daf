"""What the tests of the ``shardroute`` commands a new user runs share: the console
script's path, stopping what they start, and a short demo's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SHARDROUTE = str(Path(sys.executable).parent / "shardroute")
"""The ``shardroute`` console script of this environment (its ``sys.path[0]`` is its own
folder, not the working directory, as for a user)."""


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 30 s: ``shardroute etcd`` stops its etcd child on
    SIGTERM, while a SIGKILL would leave that child running."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def demo_summary(*flags: str, duration: float = 6) -> dict[str, Any]:
    """Run ``shardroute demo --json`` with ``flags`` for ``duration`` seconds; its summary
    (after asserting the command succeeded)."""
    command = ["demo", *flags, "--duration", str(duration), "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "shardroute.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary
