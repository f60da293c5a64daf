"""etcd's maintenance calls (space, alarms, defragmentation), a part of
:class:`~shardroute.etcd.client.EtcdClient` kept in its own module (docs/operations.md,
"etcd: compaction, quota and NOSPACE")."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any

from shardroute.errors import Compacted, ConfigError
from shardroute.etcd._failover import IDEMPOTENT, UNSENT, etcd_call
from shardroute.etcd._translate import _translated
from shardroute.etcd.maintenance import (
    ALARM_NAMES,
    ALARM_TYPES,
    EtcdAlarm,
    EtcdStatus,
    db_size_in_use,
)
from shardroute.etcd.options import EtcdOptions


class MaintenanceCalls(abc.ABC):
    """Status, alarms, defragmentation and NOSPACE recovery, over the client's
    connection (``_etcd``) and its compaction calls."""

    options: EtcdOptions

    @property
    @abc.abstractmethod
    def _etcd(self) -> Any:
        """The connected ``etcd3`` client."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the channels."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Compact history up to ``revision``."""

    @abc.abstractmethod
    def revision(self, key: str = "\0") -> int:
        """The current store revision."""

    # -- maintenance: space, alarms (docs/operations.md) -----------------------------

    @etcd_call(IDEMPOTENT)
    def status(self) -> EtcdStatus:
        """The status of the member this client talks to: database size, revision, leader."""
        import etcd3.etcdrpc as rpc

        client = self._etcd
        response = client.maintenancestub.Status(
            rpc.StatusRequest(),
            client.timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )
        return EtcdStatus(
            member_id=int(response.header.member_id),
            version=str(response.version),
            revision=int(response.header.revision),
            db_size=int(response.dbSize),
            db_size_in_use=db_size_in_use(response),
            leader=int(response.leader),
            raft_index=int(response.raftIndex),
        )

    @etcd_call(IDEMPOTENT)
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
            client.timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )
        return [
            EtcdAlarm(int(item.memberID), ALARM_NAMES.get(item.alarm, f"ALARM_{item.alarm}"))
            for item in response.alarms
        ]

    @etcd_call(UNSENT)
    def disarm_alarms(self, alarm: str = "NOSPACE") -> list[EtcdAlarm]:
        """Disarm every active alarm of type ``alarm`` (``etcdctl alarm disarm``); returns
        the alarms disarmed.

        Disarming NOSPACE without first freeing space (compact, defragment) only lets etcd
        raise it again on the next write: use :meth:`recover_space`.
        """
        if alarm not in ALARM_TYPES:
            names = ", ".join(sorted(ALARM_TYPES))
            raise ConfigError(f"unknown etcd alarm {alarm!r}: expected one of {names}")
        disarmed = [item for item in self._alarm("GET", 0, 0) if item.alarm == alarm]
        for item in disarmed:
            self._alarm("DEACTIVATE", item.member_id, ALARM_TYPES[alarm])
        return disarmed

    @_translated
    def defragment(self, timeout: float = 60.0) -> None:
        """Defragment every configured endpoint's member, one after the other.

        Gives the space freed by compaction back to the file system, so ``db_size``
        falls to about the live data. A member blocks its reads and writes while it
        defragments (a second or so per 100 MB). ``timeout``: per member.
        """
        import etcd3.etcdrpc as rpc

        members: list[MaintenanceCalls] = [self]
        if len(self.options.endpoints) > 1:
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
