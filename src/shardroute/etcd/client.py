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

import logging
import threading
import time
from typing import Any

import grpc

from shardroute.discovery.keys import decode_key, prefix_end
from shardroute.errors import ConfigError, EtcdUnavailable, LeaseNotFound
from shardroute.etcd import txn
from shardroute.etcd._failover import (
    IDEMPOTENT,
    REQUIRE_LEADER,
    UNSENT,
    Failover,
    etcd_call,
    mark_failed,
)
from shardroute.etcd._maintenance_calls import MaintenanceCalls
from shardroute.etcd._resolve import (
    can_settle,
    landed_despite_nospace,
    nospace,
    read_only,
    settle,
)
from shardroute.etcd._translate import _is_lease_not_found, _translated, _version_compare
from shardroute.etcd.credentials import warn_if_cleartext
from shardroute.etcd.options import EtcdOptions, parse_endpoint
from shardroute.etcd.txn import Target
from shardroute.etcd.watch import WatchStream

__all__ = ["EtcdClient"]

log = logging.getLogger("shardroute.etcd")


# Keep-alive pings detect a silently dead etcd (no RST) on a long-lived watch. etcd's
# default --grpc-keepalive-min-time is 5 s, so pinging every 10 s is allowed.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class EtcdClient(MaintenanceCalls):
    """A small etcd v3 client: ranges, puts, leases, transactions and watches.

    With several endpoints it fails over between them within each call's timeout
    (:mod:`shardroute.etcd._failover`: reads, puts and keep-alives after any endpoint
    failure, compare-and-swap writes only when etcd cannot have run them). Construction
    does no I/O; the connection (and authentication) happens on first use.
    """

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False
        self._warned = False
        self._failover = Failover(options.endpoints, options.timeout)

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
            timeout=self._failover.attempt_timeout,
            user=opts.user,
            password=opts.password,
            failover=True,
        )
        if creds is None:
            # gRPC refuses call credentials on a plaintext channel; the auth token also
            # travels as plain metadata, which etcd accepts, so use only that.
            client.call_credentials = None
        if self._failover.enabled:
            client.metadata = (*(client.metadata or ()), REQUIRE_LEADER)
        return client

    @property
    def current_endpoint(self) -> str | None:
        """``host:port`` of the member this client sends its next call to (None before
        the first call): which one changes when an endpoint fails."""
        with self._lock:
            client = self._client
        return None if client is None else str(client.endpoint_in_use.netloc)

    def _mark_current_failed(self) -> None:
        """Skip the endpoint in use for a while (a call on it failed)."""
        with self._lock:
            client = self._client
        if client is not None and self._failover.enabled:
            mark_failed(client, client.endpoint_in_use)

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

    @etcd_call(IDEMPOTENT)
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

    @etcd_call(IDEMPOTENT)
    def get(self, key: str) -> bytes | None:
        """The value of one key, or None."""
        value, _meta = self._etcd.get(key)
        return None if value is None else bytes(value)

    @etcd_call(IDEMPOTENT)
    def get_version(self, key: str) -> int:
        """The ``mod_revision`` of a key (0 when absent), without reading its value."""
        response = self._etcd.get_response(key, keys_only=True)
        return int(response.kvs[0].mod_revision) if response.kvs else 0

    @etcd_call(IDEMPOTENT)
    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Write a key (attached to ``lease`` when given); returns the new revision.

        A NOSPACE answer is checked by reading the key back (etcd applies the write that
        fills its quota, then answers NOSPACE): when it holds this value, the put
        counts as done (the key's revision is returned), else
        :class:`~shardroute.errors.EtcdNoSpace` (nothing written)."""
        try:
            response = self._etcd.put(key, value, lease=lease)
        except grpc.RpcError as exc:
            if nospace(exc):
                landed = self._read_back_after_nospace([txn.put(key, value, lease or 0)])
                if landed is not None:
                    return int(landed[0].response_put.header.revision)
            raise
        return int(response.header.revision)

    @etcd_call(IDEMPOTENT)
    def delete(self, key: str) -> bool:
        """Delete a key; True when it existed."""
        return bool(self._etcd.delete(key))

    @etcd_call(IDEMPOTENT)
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under a prefix; returns how many."""
        return int(self._etcd.delete_prefix(prefix).deleted)

    # -- compare-and-swap on one key's revision -----------------------------------

    @etcd_call(IDEMPOTENT)
    def get_with_version(self, key: str) -> tuple[bytes, int] | None:
        """The value of one key and its ``mod_revision`` (its version), or None."""
        value, meta = self._etcd.get(key)
        return None if value is None else (bytes(value), int(meta.mod_revision))

    @_translated
    def put_if_version(
        self, key: str, value: bytes, expected_version: int, lease: int | None = None
    ) -> int | None:
        """Write ``key`` only if its ``mod_revision`` is ``expected_version``.

        ``expected_version=0`` means the key must not exist. One etcd transaction
        (settled like :meth:`txn` when its outcome is unknown): returns the new revision
        (the key's new version), or None when the compare failed (nothing written).
        Raises :class:`~shardroute.errors.LeaseNotFound` when ``lease`` is unknown to
        etcd (expired or revoked; nothing written).
        """
        if isinstance(expected_version, bool) or expected_version < 0:
            raise ConfigError(f"expected_version must be an int >= 0, got {expected_version!r}")
        target: Target = "mod_revision" if expected_version else "create_revision"
        compare = [txn.compare(key, target, "EQUAL", expected_version)]
        try:
            succeeded, responses = self.txn(compare, [txn.put(key, value, lease or 0)])
        except LeaseNotFound as exc:
            raise LeaseNotFound(
                f"etcd lease {lease} not found (expired or revoked): nothing was written "
                f"to {key!r}; read the owner's current lease and decide again",
                key,
            ) from exc
        return int(responses[0].response_put.header.revision) if succeeded else None

    @etcd_call(UNSENT)
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

    @etcd_call(IDEMPOTENT)
    def revision(self, key: str = "\0") -> int:
        """The current store revision, read with a get of ``key`` (pass a key the etcd
        user may read when etcd's RBAC is on: docs/security.md)."""
        response = self._etcd.get_response(key)
        return int(response.header.revision)

    @etcd_call(UNSENT)
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
        :class:`~shardroute.errors.LeaseNotFound` (nothing written). With several
        endpoints, a transaction that only reads is sent again when its member fails,
        and one of compares and puts (and deletes) whose member failed under it is
        settled (:mod:`shardroute.etcd._resolve`): applied once, or an error."""
        failover = self._failover
        deadline = time.monotonic() + self.options.timeout
        try:
            return failover.call(
                IDEMPOTENT if read_only(success) else UNSENT,
                lambda: self._txn_attempt(compare, success, failover.attempt_timeout),
                self._mark_current_failed,
            )
        except grpc.RpcError as exc:
            if nospace(exc):  # the write that filled the quota may have landed: read it
                landed = self._read_back_after_nospace(success)
                if landed is None:
                    raise
                return True, landed
            if not failover.enabled or not can_settle(exc, compare, success):
                raise
            settled = settle(
                self._txn_attempt,
                self._mark_current_failed,
                compare,
                success,
                deadline,
                failover.attempt_timeout,
            )
            if settled is None:
                raise
            log.info(
                "settled an etcd transaction whose member failed under it (%s): %s",
                exc.code() if isinstance(exc, grpc.Call) else type(exc).__name__,
                "applied" if settled[0] else "its compare failed",
            )
            return settled

    def _read_back_after_nospace(self, success: list[Any]) -> list[Any] | None:
        """After a NOSPACE answer to the write ``success``: the responses etcd would have
        given when its keys hold what it wrote (logged: it landed), else None."""
        landed = landed_despite_nospace(self._txn_attempt, success, self._failover.attempt_timeout)
        if landed is not None:
            keys = [op.request_put.key.decode() for op in success if op.HasField("request_put")]
            log.warning(
                "etcd answered NOSPACE to a write it applied (the write that filled its "
                "quota: etcd applies it, then raises the alarm): %s holds what was written, "
                "so it counts as done; the next writes will be refused until space is freed "
                "(docs/operations.md, 'etcd: compaction, quota and NOSPACE', says how)",
                ", ".join(keys),
            )
        return landed

    def _txn_attempt(
        self, compare: list[Any], success: list[Any], timeout: float
    ) -> tuple[bool, list[Any]]:
        """One transaction on the member in use, within ``timeout`` seconds."""
        import etcd3.etcdrpc as rpc

        client = self._etcd
        try:
            response = client.kvstub.Txn(
                rpc.TxnRequest(compare=compare, success=success, failure=[]),
                timeout,
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

    # -- leases -------------------------------------------------------------------

    @etcd_call(UNSENT)
    def grant_lease(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds; returns its id."""
        return int(self._etcd.lease(ttl).id)

    @etcd_call(IDEMPOTENT)
    def refresh_lease(self, lease_id: int) -> int:
        """Send one keep-alive; returns the remaining TTL (0 or less: the lease expired)."""
        ttl = 0
        for response in self._etcd.refresh_lease(lease_id):
            ttl = int(response.TTL)
        return ttl

    @etcd_call(UNSENT)
    def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting every key attached to it."""
        self._etcd.revoke_lease(lease_id)

    # -- watch --------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: int) -> WatchStream:
        """Open a watch on every key under ``prefix`` from ``start_revision`` on."""
        return self.watch_range(prefix, prefix_end(prefix), start_revision)

    @etcd_call(IDEMPOTENT)
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
        channel = client.channel  # picks a live endpoint first
        endpoint = client.endpoint_in_use
        stream = WatchStream(
            rpc.WatchStub(channel),
            request,
            client.call_credentials,
            client.metadata,
            on_endpoint_failure=(
                (lambda: mark_failed(client, endpoint)) if self._failover.enabled else None
            ),
        )
        try:
            stream.wait_created(client.timeout)
        except BaseException:
            stream.cancel()
            raise
        return stream
