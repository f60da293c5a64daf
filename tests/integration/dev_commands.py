"""What the tests of the ``shardroute`` commands a new user runs share: the console
script's path, and stopping what they start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
