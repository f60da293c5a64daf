"""The committed generated code matches protos/ (regenerate with scripts/gen_protos.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_control_service_has_the_migration_calls() -> None:
    from shardroute._proto import shard_pb2

    service = shard_pb2.DESCRIPTOR.services_by_name["ShardControl"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods["ExportSession"] == (False, True)
    assert methods["ImportSession"] == (True, False)
    assert {"GetStatus", "Drain", "ListSessions", "WarmSession", "ReleaseSession"} <= set(methods)
    assert shard_pb2.DESCRIPTOR.name == "shardroute/v1/shard.proto"
