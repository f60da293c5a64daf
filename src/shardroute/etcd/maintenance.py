"""etcd maintenance: database size, alarms, defragmentation, NOSPACE recovery
(docs/operations.md, "etcd: compaction, quota and NOSPACE")."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
from dataclasses import dataclass
from typing import Any

from shardroute.errors import Compacted, ConfigError
from shardroute.etcd._translate import _translated
from shardroute.etcd.options import EtcdOptions

__all__ = ["EtcdAlarm", "EtcdStatus", "Maintenance"]

log = logging.getLogger("shardroute.etcd")

# etcd's AlarmType enum (the etcd3 package's protos predate CORRUPT).
_ALARM_NAMES = {1: "NOSPACE", 2: "CORRUPT"}
_ALARM_TYPES = {name: number for number, name in _ALARM_NAMES.items()}
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


def _db_size_in_use(response: Any) -> int | None:
    """``dbSizeInUse`` of a StatusResponse, read from its unknown fields."""
    unknown_fields: Any = importlib.import_module("google.protobuf.unknown_fields")
    for item in unknown_fields.UnknownFieldSet(response):
        if item.field_number == _DB_SIZE_IN_USE_FIELD and isinstance(item.data, int):
            return int(item.data)
    return None


class Maintenance:
    """The maintenance calls of :class:`~shardroute.etcd.EtcdClient` (a base class: it
    needs the client's connection, ``_etcd``, and its ``options``)."""

    options: EtcdOptions

    @property
    def _etcd(self) -> Any:
        raise NotImplementedError

    def revision(self) -> int:
        """The current store revision."""
        raise NotImplementedError

    def compact(self, revision: int) -> None:
        """Compact history up to ``revision``."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""
        raise NotImplementedError

    @_translated
    def status(self) -> EtcdStatus:
        """The status of the member this client talks to: database size, revision, leader."""
        import etcd3.etcdrpc as rpc

        client = self._etcd
        response = client.maintenancestub.Status(
            rpc.StatusRequest(),
            self.options.timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )
        return EtcdStatus(
            member_id=int(response.header.member_id),
            version=str(response.version),
            revision=int(response.header.revision),
            db_size=int(response.dbSize),
            db_size_in_use=_db_size_in_use(response),
            leader=int(response.leader),
            raft_index=int(response.raftIndex),
        )

    @_translated
    def alarms(self) -> list[EtcdAlarm]:
        """The cluster's active alarms (empty when all is well)."""
        return self._alarm("GET", 0, 0)

    def _alarm(self, action: str, member_id: int, alarm: int) -> list[EtcdAlarm]:
        import etcd3.etcdrpc as rpc

        client = self._etcd
        request = rpc.AlarmRequest(
            action=getattr(rpc.AlarmRequest, action), memberID=member_id, alarm=alarm
        )
        response = client.maintenancestub.Alarm(
            request,
            self.options.timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )
        return [
            EtcdAlarm(int(item.memberID), _ALARM_NAMES.get(item.alarm, f"ALARM_{item.alarm}"))
            for item in response.alarms
        ]

    @_translated
    def disarm_alarms(self, alarm: str = "NOSPACE") -> list[EtcdAlarm]:
        """Disarm every active alarm of type ``alarm`` (``etcdctl alarm disarm``); returns
        the alarms disarmed.

        Disarming NOSPACE without first freeing space (compact, defragment) only lets etcd
        raise it again on the next write: use :meth:`recover_space`.
        """
        if alarm not in _ALARM_TYPES:
            names = ", ".join(sorted(_ALARM_TYPES))
            raise ConfigError(f"unknown etcd alarm {alarm!r}: expected one of {names}")
        disarmed = [item for item in self._alarm("GET", 0, 0) if item.alarm == alarm]
        for item in disarmed:
            self._alarm("DEACTIVATE", item.member_id, _ALARM_TYPES[alarm])
        return disarmed

    @_translated
    def defragment(self, timeout: float = 60.0) -> None:
        """Defragment every configured endpoint's member, one after the other.

        Gives the space freed by compaction back to the file system, so ``db_size``
        falls to about the live data. A member blocks its reads and writes while it
        defragments (a second or so per 100 MB). ``timeout``: per member.
        """
        import etcd3.etcdrpc as rpc

        if len(self.options.endpoints) == 1:
            members = [self]
        else:
            members = [
                type(self)(dataclasses.replace(self.options, endpoints=(endpoint,)))  # type: ignore[call-arg]
                for endpoint in self.options.endpoints
            ]
        try:
            for member in members:
                client = member._etcd
                client.maintenancestub.Defragment(
                    rpc.DefragmentRequest(),
                    timeout,
                    credentials=client.call_credentials,
                    metadata=client.metadata,
                )
        finally:
            for member in members:
                if member is not self:
                    member.close()

    @_translated
    def recover_space(self, defrag_timeout: float = 60.0) -> EtcdStatus:
        """Recover from a NOSPACE alarm (or free space before one): compact history up to
        the current revision, defragment every endpoint, disarm NOSPACE alarms.

        Every key keeps its current value; only superseded history goes, so a watcher
        resuming from an older revision does a full resync. Returns the status
        afterwards. If the live data alone fills the quota, writes raise
        :class:`~shardroute.errors.EtcdNoSpace` again: delete data or raise the quota.
        """
        with contextlib.suppress(Compacted):  # already compacted up to the current revision
            self.compact(self.revision())
        self.defragment(defrag_timeout)
        self.disarm_alarms("NOSPACE")
        return self.status()
