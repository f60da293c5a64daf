"""Moved: the mover lives in :mod:`shardroute.sessions.migrator` (one home for sessions).

This module re-exports it for one release; import from :mod:`shardroute.sessions`.
"""

from shardroute.sessions.chunks import DEFAULT_CHUNK_BYTES
from shardroute.sessions.migrator import MigrationResult, Migrator, control_stub

__all__ = ["DEFAULT_CHUNK_BYTES", "MigrationResult", "Migrator", "control_stub"]
