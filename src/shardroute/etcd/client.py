"""The etcd client: key ranges, puts, transactions, leases and watches.

Wraps the ``etcd3`` package (the ``cslab-etcd3`` fork) so the client library can be
swapped later, and translates every etcd or gRPC failure into
:class:`~shardroute.errors.EtcdUnavailable` (or :class:`~shardroute.errors.Compacted`)
once, here, with the original exception as ``__cause__``. A conditional write naming a
lease etcd does not know raises :class:`~shardroute.errors.LeaseNotFound`; a write
refused because etcd's space quota is full (the NOSPACE alarm) raises
:class:`~shardroute.errors.EtcdNoSpace`.

Thread contract: one :class:`EtcdClient` may be shared by threads; each
:class:`~shardroute.etcd.watch.WatchStream` is consumed by one thread and cancelled
from any.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

import grpc

from shardroute.discovery.keys import decode_key, prefix_end
from shardroute.errors import Compacted, ConfigError, EtcdUnavailable, LeaseNotFound
from shardroute.etcd._translate import _is_lease_not_found, _translated, _version_compare
from shardroute.etcd.credentials import warn_if_cleartext
from shardroute.etcd.maintenance import (
    ALARM_NAMES,
    ALARM_TYPES,
    EtcdAlarm,
    EtcdStatus,
    db_size_in_use,
)
from shardroute.etcd.options import EtcdOptions, parse_endpoint
from shardroute.etcd.watch import WatchStream

__all__ = ["EtcdClient"]

# Keep-alive pings detect a silently dead etcd (no RST) on a long-lived watch. etcd's
# default --grpc-keepalive-min-time is 5 s, so pinging every 10 s is allowed.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class EtcdClient:
    """A small etcd v3 client: ranges, puts, leases, transactions and watches.

    Construction does no I/O; the connection (and authentication) happens on first use.
    """

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False
        self._warned = False

    @property
    def _etcd(self) -> Any:
        with self._lock:
            if self._closed:
                raise EtcdUnavailable("etcd client is closed")
            if self._client is None:
                self._client = self._connect()
            return self._client

    @_translated
    def _connect(self) -> Any:
        import etcd3
        from etcd3.client import Endpoint

        opts = self.options
        if not self._warned:
            self._warned = warn_if_cleartext(opts)  # once per client, not per reconnection
        creds = None
        if opts.ca_cert is not None:
            creds = etcd3.MultiEndpointEtcd3Client.get_secure_creds(
                opts.ca_cert, opts.cert_key, opts.cert_cert
            )
        endpoints = []
        for text in opts.endpoints:
            host, port = parse_endpoint(text)
            endpoints.append(
                Endpoint(
                    host,
                    port,
                    secure=creds is not None,
                    creds=creds,
                    time_retry=opts.retry_failed_endpoint_s,
                    opts=_CHANNEL_OPTIONS,
                )
            )
        client = etcd3.MultiEndpointEtcd3Client(
            endpoints=endpoints,
            timeout=opts.timeout,
            user=opts.user,
            password=opts.password,
            failover=True,
        )
        if creds is None:
            # gRPC refuses call credentials on a plaintext channel; the auth token also
            # travels as plain metadata, which etcd accepts, so use only that.
            client.call_credentials = None
        return client

    def _forget_connection(self) -> None:
        """Drop the connection so the next call connects (and authenticates) again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        """Close the channels. Idempotent."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- key/value ----------------------------------------------------------------

    @_translated
    def range(
        self, start: str, end: str, revision: int | None = None
    ) -> tuple[int, list[tuple[str, bytes, int]]]:
        """Read keys in [start, end) at ``revision`` (latest when None).

        Returns the store revision the read reflects and ``(key, value, mod_revision)``
        tuples sorted by key.
        """
        kwargs: dict[str, Any] = {}
        if revision is not None:
            kwargs["revision"] = revision
        response = self._etcd.get_range_response(start, end, sort_order="ascend", **kwargs)
        items = [(decode_key(kv.key), bytes(kv.value), kv.mod_revision) for kv in response.kvs]
        return response.header.revision, items

    def range_prefix(
        self, prefix: str, revision: int | None = None
    ) -> tuple[int, list[tuple[str, bytes, int]]]:
        """Read every key starting with ``prefix``."""
        return self.range(prefix, prefix_end(prefix), revision)

    @_translated
    def get(self, key: str) -> bytes | None:
        """The value of one key, or None."""
        value, _meta = self._etcd.get(key)
        return None if value is None else bytes(value)

    @_translated
    def get_version(self, key: str) -> int:
        """The ``mod_revision`` of a key (0 when absent), without reading its value."""
        response = self._etcd.get_response(key, keys_only=True)
        return int(response.kvs[0].mod_revision) if response.kvs else 0

    @_translated
    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Write a key (attached to ``lease`` when given); returns the new revision."""
        response = self._etcd.put(key, value, lease=lease)
        return int(response.header.revision)

    @_translated
    def delete(self, key: str) -> bool:
        """Delete a key; True when it existed."""
        return bool(self._etcd.delete(key))

    @_translated
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under a prefix; returns how many."""
        return int(self._etcd.delete_prefix(prefix).deleted)

    # -- compare-and-swap on one key's revision -----------------------------------

    @_translated
    def get_with_version(self, key: str) -> tuple[bytes, int] | None:
        """The value of one key and its ``mod_revision`` (its version), or None."""
        value, meta = self._etcd.get(key)
        return None if value is None else (bytes(value), int(meta.mod_revision))

    @_translated
    def put_if_version(
        self, key: str, value: bytes, expected_version: int, lease: int | None = None
    ) -> int | None:
        """Write ``key`` only if its ``mod_revision`` is ``expected_version``.

        ``expected_version=0`` means the key must not exist. One etcd transaction:
        returns the new revision (the key's new version), or None when the compare
        failed (nothing written). Raises :class:`~shardroute.errors.StaleState` when
        ``lease`` is unknown to etcd (expired or revoked; nothing written).
        """
        client = self._etcd
        ops = client.transactions
        compare = _version_compare(ops, key, expected_version)
        try:
            succeeded, responses = client.transaction(
                compare=[compare], success=[ops.put(key, value, lease=lease)], failure=[]
            )
        except grpc.RpcError as exc:
            if _is_lease_not_found(exc):
                raise LeaseNotFound(
                    f"etcd lease {lease} not found (expired or revoked): nothing was written "
                    f"to {key!r}; read the owner's current lease and decide again",
                    key,
                ) from exc
            raise
        if not succeeded:
            return None
        return int(responses[0].response_put.header.revision)

    @_translated
    def delete_if_version(self, key: str, expected_version: int) -> bool:
        """Delete ``key`` only if its ``mod_revision`` is ``expected_version``.

        ``expected_version=0`` means the key must not exist (nothing to delete). Returns
        True when the compare held (the key is gone now), False when it failed (nothing
        changed).
        """
        client = self._etcd
        ops = client.transactions
        compare = _version_compare(ops, key, expected_version)
        success = [ops.delete(key)] if expected_version else []
        succeeded, _responses = client.transaction(compare=[compare], success=success, failure=[])
        return bool(succeeded)

    @_translated
    def revision(self, key: str = "\0") -> int:
        """The current store revision, read with a get of ``key`` (pass a key the etcd
        user may read when etcd's RBAC is on: docs/security.md)."""
        response = self._etcd.get_response(key)
        return int(response.header.revision)

    @_translated
    def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (physical, so it is done when this returns)."""
        self._etcd.compact(revision, physical=True)

    # -- raw transactions (shardroute.etcd.txn builds the parts) ----------------------

    @_translated
    def txn(self, compare: list[Any], success: list[Any]) -> tuple[bool, list[Any]]:
        """One etcd transaction: if every ``compare`` holds, run ``success`` (puts,
        deletes, reads; built with :mod:`shardroute.etcd.txn`) at one revision.
        Returns whether the compares held and the ops' responses (``etcdrpc``
        ``ResponseOp``). A put naming a lease etcd does not know raises
        :class:`~shardroute.errors.LeaseNotFound` (nothing written)."""
        import etcd3.etcdrpc as rpc

        client = self._etcd
        try:
            response = client.kvstub.Txn(
                rpc.TxnRequest(compare=compare, success=success, failure=[]),
                client.timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except grpc.RpcError as exc:
            if _is_lease_not_found(exc):
                raise LeaseNotFound(
                    "etcd lease not found (expired or revoked): nothing was written", ""
                ) from exc
            raise
        return bool(response.succeeded), list(response.responses)

    # -- maintenance: space, alarms (docs/operations.md) -----------------------------

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
            db_size_in_use=db_size_in_use(response),
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
            EtcdAlarm(int(item.memberID), ALARM_NAMES.get(item.alarm, f"ALARM_{item.alarm}"))
            for item in response.alarms
        ]

    @_translated
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

        if len(self.options.endpoints) == 1:
            members = [self]
        else:
            members = [
                EtcdClient(dataclasses.replace(self.options, endpoints=(endpoint,)))
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

    # -- leases -------------------------------------------------------------------

    @_translated
    def grant_lease(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds; returns its id."""
        return int(self._etcd.lease(ttl).id)

    @_translated
    def refresh_lease(self, lease_id: int) -> int:
        """Send one keep-alive; returns the remaining TTL (0 or less: the lease expired)."""
        ttl = 0
        for response in self._etcd.refresh_lease(lease_id):
            ttl = int(response.TTL)
        return ttl

    @_translated
    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key attached to it."""
        self._etcd.revoke_lease(lease_id)

    # -- watch --------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: int) -> WatchStream:
        """Open a watch on every key under ``prefix`` from ``start_revision`` on."""
        return self.watch_range(prefix, prefix_end(prefix), start_revision)

    @_translated
    def watch_range(self, start: str, end: str, start_revision: int) -> WatchStream:
        """Open a watch on keys in [start, end) from ``start_revision`` on.

        Returns once etcd confirmed the watch; raises :class:`Compacted` when
        ``start_revision`` is already compacted.
        """
        import etcd3.etcdrpc as rpc

        client = self._etcd
        request = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=start.encode(), range_end=end.encode(), start_revision=start_revision
            )
        )
        stream = WatchStream(
            rpc.WatchStub(client.channel), request, client.call_credentials, client.metadata
        )
        try:
            stream.wait_created(self.options.timeout)
        except BaseException:
            stream.cancel()
            raise
        return stream
