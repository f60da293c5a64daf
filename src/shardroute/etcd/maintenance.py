"""What etcd's maintenance calls answer: member status and alarms (the calls are
:class:`~shardroute.etcd.EtcdClient` methods; docs/operations.md, "etcd: compaction,
quota and NOSPACE")."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["ALARM_NAMES", "ALARM_TYPES", "EtcdAlarm", "EtcdStatus", "db_size_in_use"]

# etcd's AlarmType enum (the etcd3 package's protos predate CORRUPT).
ALARM_NAMES = {1: "NOSPACE", 2: "CORRUPT"}
ALARM_TYPES = {name: number for number, name in ALARM_NAMES.items()}
# StatusResponse.dbSizeInUse (etcd >= 3.4), absent from the etcd3 package's protos.
_DB_SIZE_IN_USE_FIELD = 9


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """One etcd member's status (the Maintenance Status RPC) as it answered."""

    member_id: int
    version: str
    revision: int
    db_size: int
    """Bytes of the member's database file: what ``--quota-backend-bytes`` limits. It
    grows with history and shrinks only when the member is defragmented."""
    db_size_in_use: int | None
    """Bytes of that file holding data; falls after a compaction frees history (the rest
    is reused by later writes, or given back by a defragmentation). None when etcd does
    not report it (before 3.4)."""
    leader: int
    raft_index: int


@dataclass(frozen=True, slots=True)
class EtcdAlarm:
    """An active etcd alarm: ``alarm`` is ``"NOSPACE"`` (the space quota is full) or
    ``"CORRUPT"``; ``member_id`` is the member that raised it."""

    member_id: int
    alarm: str


def db_size_in_use(response: Any) -> int | None:
    """``dbSizeInUse`` of a StatusResponse, read from its unknown fields."""
    unknown_fields: Any = importlib.import_module("google.protobuf.unknown_fields")
    for item in unknown_fields.UnknownFieldSet(response):
        if item.field_number == _DB_SIZE_IN_USE_FIELD and isinstance(item.data, int):
            return int(item.data)
    return None
