"""What the tests of the ``shardroute`` commands a new user runs share: the console
script's path and whether an etcd answers."""

from __future__ import annotations

import sys
from pathlib import Path

from shardroute.errors import EtcdUnavailable
from shardroute.etcd import EtcdClient, EtcdOptions

SHARDROUTE = str(Path(sys.executable).parent / "shardroute")
"""The ``shardroute`` console script of this environment (its ``sys.path[0]`` is its own
folder, not the working directory, as for a user)."""


def etcd_answers(endpoint: str) -> bool:
    """True when an etcd at ``endpoint`` answers a read."""
    client = EtcdClient(EtcdOptions((endpoint,), timeout=1.0))
    try:
        client.revision()
        return True
    except EtcdUnavailable:
        return False
    finally:
        client.close()
