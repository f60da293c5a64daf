"""What the tests of the ``shardroute`` commands a new user runs share: the console
script's path."""

from __future__ import annotations

import sys
from pathlib import Path

SHARDROUTE = str(Path(sys.executable).parent / "shardroute")
"""The ``shardroute`` console script of this environment (its ``sys.path[0]`` is its own
folder, not the working directory, as for a user)."""
