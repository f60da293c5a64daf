"""The only module that talks to etcd. Everything else calls :class:`EtcdClient`.

It wraps the ``etcd3`` package (the ``cslab-etcd3`` fork) so the client library can be
swapped later, and translates every etcd or gRPC failure into
:class:`~shardroute.errors.EtcdUnavailable` (or :class:`Compacted`) once, here, with the
original exception as ``__cause__``. A conditional write naming a lease etcd does not know
raises :class:`~shardroute.errors.StaleState`; a write refused because etcd's space quota
is full (the NOSPACE alarm) raises :class:`~shardroute.errors.EtcdNoSpace`.

Maintenance (space): :meth:`EtcdClient.status` (database size), :meth:`EtcdClient.alarms`,
:meth:`EtcdClient.defragment`, :meth:`EtcdClient.disarm_alarms` and
:meth:`EtcdClient.recover_space`, which does the whole NOSPACE recovery.

Thread contract: one :class:`EtcdClient` may be shared by threads; each
:class:`WatchStream` is consumed by one thread and cancelled from any.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc

from shardroute.discovery.changes import KeyChange
from shardroute.discovery.keys import prefix_end
from shardroute.errors import (
    ConfigError,
    EtcdNoSpace,
    EtcdUnavailable,
    LeaseNotFound,
    ShardRouteError,
)

__all__ = [
    "Compacted",
    "EtcdAlarm",
    "EtcdClient",
    "EtcdOptions",
    "EtcdStatus",
    "WatchStream",
    "parse_endpoint",
]

log = logging.getLogger("shardroute.etcd")

P = ParamSpec("P")
R = TypeVar("R")

# Keep-alive pings detect a silently dead etcd (no RST) on a long-lived watch. etcd's
# default --grpc-keepalive-min-time is 5 s, so pinging every 10 s is allowed.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Compacted(ShardRouteError):
    """The revision a watch or read asked for was compacted: do a full resync."""

    retry_safe = True

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    """How to reach etcd: endpoints, per-call timeout, TLS and user/password auth.

    ``endpoints`` are ``host:port`` (``http://`` or ``https://`` prefixes accepted); the
    client fails over between them. TLS is used when ``ca_cert`` is set (paths to PEM
    files; ``cert_key``/``cert_cert`` for client certificates).
    """

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    timeout: float = 5.0
    ca_cert: str | None = None
    cert_key: str | None = None
    cert_cert: str | None = None
    user: str | None = None
    password: str | None = None
    retry_failed_endpoint_s: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            object.__setattr__(self, "endpoints", (self.endpoints,))
        if not self.endpoints:
            raise ConfigError("at least one etcd endpoint is required")
        for endpoint in self.endpoints:
            parse_endpoint(endpoint)
        if self.timeout <= 0:
            raise ConfigError(f"etcd timeout must be > 0, got {self.timeout!r}")
        if (self.user is None) != (self.password is None):
            raise ConfigError("etcd user and password must be given together")
        if (self.cert_key is None) != (self.cert_cert is None):
            raise ConfigError("cert_key and cert_cert must be given together")
        if self.cert_key is not None and self.ca_cert is None:
            raise ConfigError("client certificates need ca_cert as well")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``host:port`` (optionally with an http(s):// scheme) or raise ConfigError."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid etcd endpoint {endpoint!r}: expected host:port")
    return host.strip("[]"), int(port)


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Translate etcd/gRPC failures into EtcdUnavailable (or Compacted) at the boundary."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import etcd3.exceptions as etcd_exc

        try:
            return fn(*args, **kwargs)
        except ShardRouteError:
            raise
        except etcd_exc.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except grpc.RpcError as exc:
            error = _from_rpc_error(exc)
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                # An expired auth token: authenticate again on the next call.
                client = args[0] if args else None
                if isinstance(client, EtcdClient):
                    client._forget_connection()
            raise error from exc
        except (etcd_exc.Etcd3Exception, ValueError, OSError) as exc:
            raise EtcdUnavailable(f"etcd is unreachable: {exc or type(exc).__name__}") from exc

    return wrapper


def _from_rpc_error(exc: grpc.RpcError) -> ShardRouteError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code is grpc.StatusCode.OUT_OF_RANGE and "compacted" in (details or ""):
        return Compacted(0)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "space exceeded" in (details or ""):
        return EtcdNoSpace(details or "")
    if code is grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in (details or ""):
        return ConfigError(f"etcd refused the user name or password: {details}")
    if code is grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in (details or ""):
        return ConfigError("etcd has authentication enabled: pass a user and password")
    return EtcdUnavailable(f"etcd call failed: {code.name if code else 'error'}: {details}")


def _version_compare(ops: Any, key: str, expected_version: int) -> Any:
    """The etcd compare for "key is at ``expected_version``" (0: the key is absent)."""
    if isinstance(expected_version, bool) or expected_version < 0:
        raise ConfigError(f"expected_version must be an int >= 0, got {expected_version!r}")
    if expected_version == 0:
        return ops.create(key) == 0
    return ops.mod(key) == expected_version


def _is_lease_not_found(exc: grpc.RpcError) -> bool:
    """etcd's answer to a put naming a lease it does not know ("requested lease not found")."""
    return (
        isinstance(exc, grpc.Call)
        and exc.code() is grpc.StatusCode.NOT_FOUND
        and "lease not found" in (exc.details() or "")
    )


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


class EtcdClient:
    """A small etcd v3 client: ranges, puts, leases, transactions and watches.

    Construction does no I/O; the connection (and authentication) happens on first use.
    """

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False

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
        items = [(kv.key.decode(), bytes(kv.value), kv.mod_revision) for kv in response.kvs]
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
    def revision(self) -> int:
        """The current store revision."""
        response = self._etcd.get_response("\0")
        return int(response.header.revision)

    @_translated
    def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` (physical, so it is done when this returns)."""
        self._etcd.compact(revision, physical=True)

    # -- maintenance: space, alarms -----------------------------------------------

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


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: its changes, in order, and the header revision."""

    header_revision: int
    changes: tuple[KeyChange, ...]


class WatchStream:
    """One etcd watch stream. Iterate to get :class:`WatchBatch` objects.

    Iteration raises :class:`Compacted` or :class:`EtcdUnavailable` when the stream
    breaks, and stops quietly after :meth:`cancel`.
    """

    def __init__(self, stub: Any, request: Any, credentials: Any, metadata: Any) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requests.put(request)
        self._cancelled = threading.Event()
        self._call = stub.Watch(
            iter(self._requests.get, None), credentials=credentials, metadata=metadata
        )
        self._responses: Iterator[Any] = iter(self._call)
        self.created_revision = 0

    def wait_created(self, timeout: float) -> None:
        """Block until etcd confirms the watch (or raise)."""
        timer = threading.Timer(timeout, self._call.cancel)
        timer.daemon = True
        timer.start()
        try:
            first = next(self._responses)
        except StopIteration:
            raise EtcdUnavailable("etcd closed the watch stream before creating it") from None
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.CANCELLED:
                raise EtcdUnavailable(f"etcd did not confirm the watch in {timeout}s") from exc
            raise _from_rpc_error(exc) from exc
        finally:
            timer.cancel()
        if first.compact_revision:
            raise Compacted(first.compact_revision)
        if first.canceled:
            raise EtcdUnavailable(f"etcd refused the watch: {first.cancel_reason}")
        self.created_revision = int(first.header.revision)

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for response in self._responses:
                if response.compact_revision:
                    raise Compacted(response.compact_revision)
                if response.canceled:
                    raise EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if not response.events:
                    continue
                changes = tuple(
                    KeyChange(
                        event.kv.key.decode(),
                        None if event.type == 1 else bytes(event.kv.value),
                        int(event.kv.mod_revision),
                    )
                    for event in response.events
                )
                yield WatchBatch(int(response.header.revision), changes)
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                return
            raise _from_rpc_error(exc) from exc
        if not self._cancelled.is_set():
            raise EtcdUnavailable("etcd ended the watch stream")

    def cancel(self) -> None:
        """Stop the stream; a thread blocked in iteration returns. Idempotent."""
        self._cancelled.set()
        self._requests.put(None)
        self._call.cancel()
