"""The etcd session store: a snapshot key and a turn log per session (docs/etcd-schema.md).

Keys of one session (its key never contains ``/``, so the prefix is its own):

- ``/shardroute/<service>/state/<session_key>``: the snapshot (an SRS1 envelope);
- ``/shardroute/<service>/state/<session_key>/<id>``: one turn record each, ``<id>`` the
  session's version before the record was written, 20 digits, so keys sort in write order.

A session's version is the newest ``mod_revision`` among its keys. Every write is one etcd
transaction whose compares say "nothing of this session changed since version v": no key
of it is newer than v, and the key written at v is still there at v. A turn appends one
record; a fold writes a new snapshot and deletes the records in the same transaction; a
read is one transaction reading the snapshot and the records at one revision. With
``ttl_s`` every key of a session is attached to its own lease, so an idle session expires
whole and at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from shardroute.discovery.keys import KeySchema, prefix_end
from shardroute.errors import LeaseNotFound, MalformedRecord
from shardroute.etcd import EtcdClient, txn
from shardroute.sessions.applied import Applied, added
from shardroute.sessions.envelope import (
    FoldPolicy,
    LogPosition,
    StoredState,
    apply_record,
    decode_envelope,
    decode_record,
    encode_envelope,
    encode_record,
    record_keep,
)
from shardroute.sessions.store import (
    DEFAULT_MAX_BYTES,
    check_max_bytes,
    check_save,
    check_ttl,
    check_version,
    stale,
    turns_after,
)

__all__ = ["EtcdSessionStore"]

_ID_DIGITS = 20
_MAX_LEASES_TRACKED = 65536


@dataclass(frozen=True, slots=True)
class _Key:
    """One key of a session as read: name, value (empty when keys only), revisions."""

    key: str
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class _Read:
    """Every key of one session at one revision: the snapshot, then records in order."""

    snapshot: _Key | None
    records: tuple[_Key, ...]

    @property
    def newest(self) -> _Key | None:
        keys = ([self.snapshot] if self.snapshot else []) + list(self.records)
        return max(keys, key=lambda k: k.mod_revision, default=None)


class EtcdSessionStore:
    """A :class:`~shardroute.sessions.SessionStore` in etcd (see the module docstring).

    Args:
        etcd: the etcd client (shared, thread-safe).
        service: the service whose ``state/`` keys this store uses.
        max_bytes: the largest state (default 1 MiB). etcd refuses a request larger than
            its ``--max-request-bytes`` (1.5 MiB by default): keep ``max_bytes`` plus about
            200 bytes of envelope below the server's limit, or raise that limit.
        ttl_s: idle sessions expire this long after their last write (None: never). Each
            session gets an etcd lease of 1.5 * ``ttl_s`` (whole seconds), kept alive at
            most every ``ttl_s`` / 2 by writes, so it expires between ``ttl_s`` and
            1.5 * ``ttl_s`` after its last saved turn.
        fold: when a checkpoint writes a snapshot instead of a turn record.

    Construction does no I/O. Thread-safe.
    """

    records_turns = True
    """``checkpoint`` takes ``applied=`` (:mod:`shardroute.sessions.applied`)."""

    def __init__(
        self,
        etcd: EtcdClient,
        service: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_s: float | None = None,
        fold: FoldPolicy | None = None,
    ) -> None:
        self.max_bytes = check_max_bytes(max_bytes)
        self.ttl_s = check_ttl(ttl_s)
        self.fold = fold if fold is not None else FoldPolicy()
        self._etcd = etcd
        self._keys = KeySchema(service)
        # Mutable state under _lock: bytes written, and when each lease was last kept alive.
        self._lock = threading.Lock()
        self._refreshed: OrderedDict[int, float] = OrderedDict()
        self.bytes_written = 0

    @property
    def service(self) -> str:
        """The service whose ``state/`` keys this store uses."""
        return self._keys.service

    def key(self, session_key: str) -> str:
        """The etcd key holding a session's snapshot."""
        return self._keys.state(session_key)

    def record_key(self, session_key: str, record: int) -> str:
        """The etcd key of one turn record of a session."""
        return f"{self._keys.state(session_key)}/{record:0{_ID_DIGITS}d}"

    # -- reads ----------------------------------------------------------------------

    def version(self, session_key: str) -> int:
        """The session's stored version (0 when none), read without its values (an etcd
        keys-only read: cheap even for a 1 MiB state)."""
        newest = self._read(session_key, keys_only=True).newest
        return newest.mod_revision if newest else 0

    def load(self, session_key: str) -> StoredState | None:
        """The session's state: its snapshot with every turn record applied, each step
        checked (size, CRC-32), or None.

        Raises:
            MalformedRecord: a value is corrupt or a record does not apply (the message
                names the key); the stored state is left as it is.
            EtcdUnavailable: etcd is unreachable.
        """
        read = self._read(session_key, keys_only=False)
        if read.snapshot is None:
            if read.records:
                raise MalformedRecord(read.records[0].key, "turn records without a snapshot")
            return None
        snap = read.snapshot
        state = decode_envelope(snap.key, snap.value, snap.mod_revision)
        data, owner, log_bytes, applied = state.data, state.owner, 0, state.applied
        for item in read.records:
            record = decode_record(item.key, item.value)
            data = apply_record(item.key, data, record)
            owner, log_bytes = record.owner, log_bytes + len(record.data)
            applied += record.applied
        newest = read.records[-1] if read.records else snap
        position = LogPosition(
            turns=len(read.records),
            log_bytes=log_bytes,
            snapshot_bytes=len(state.data),
            record=self._record_id(newest.key) if read.records else 0,
            lease=snap.lease,
        )
        return StoredState(data, newest.mod_revision, owner, position, applied)

    # -- writes ---------------------------------------------------------------------

    def checkpoint(
        self,
        session_key: str,
        data: bytes,
        *,
        owner: str,
        previous: StoredState | None,
        applied: Applied | None = None,
    ) -> StoredState:
        """Save one turn (see :meth:`SessionStore.checkpoint`): a turn record, or a
        snapshot when the fold policy says so."""
        expected = 0 if previous is None else previous.version
        data = check_save(session_key, data, owner, expected, self.max_bytes)
        applied = turns_after(previous, applied)
        if previous is None or expected == 0:
            return self._create(session_key, data, owner, applied)
        if previous.log.record < 0:  # position unknown: read it, write a snapshot
            position = self._position(session_key, expected)
            return self._fold(session_key, data, owner, position, applied)
        keep = record_keep(previous, data, self.fold)
        if keep is None:
            return self._fold(session_key, data, owner, previous, applied)
        log = previous.log
        self._keep_alive(log.lease)
        new = added(previous.applied, applied)
        record = encode_record(previous.data, data, owner=owner, keep=keep, applied=new)
        put = txn.put(self.record_key(session_key, expected), record, log.lease)
        version = self._write(session_key, previous, [put], len(record))
        return StoredState(data, version, owner, log.appended(len(data) - keep, expected), applied)

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Compare-and-swap the session's whole state (see :meth:`SessionStore.save`)."""
        data = check_save(session_key, data, owner, expected_version, self.max_bytes)
        if expected_version == 0:
            return self._create(session_key, data, owner).version
        previous = self._position(session_key, expected_version)
        return self._fold(session_key, data, owner, previous).version

    def delete(self, session_key: str, *, expected_version: int | None = None) -> bool:
        """Remove the session's snapshot and log (see :meth:`SessionStore.delete`)."""
        self._keys.state(session_key)
        check_version(expected_version)
        snapshot = self.key(session_key)
        deletes = [txn.delete(snapshot), txn.delete(f"{snapshot}/", prefix_end(f"{snapshot}/"))]
        if expected_version is None:
            _ok, responses = self._txn([], deletes)
            return any(r.response_delete_range.deleted for r in responses)
        if expected_version == 0:
            if self.version(session_key) != 0:
                raise stale(session_key, 0, "deleted")
            return False
        previous = self._position(session_key, expected_version)
        if not self._txn(self._unchanged(session_key, previous), deletes)[0]:
            raise stale(session_key, expected_version, "deleted")
        return True

    # -- internals ------------------------------------------------------------------

    def _create(
        self, session_key: str, data: bytes, owner: str, applied: Applied = ()
    ) -> StoredState:
        snapshot = self.key(session_key)
        lease = self._grant()
        raw = encode_envelope(data, owner=owner, applied=applied)
        compare = [
            txn.compare(snapshot, "create_revision", "EQUAL", 0),
            txn.compare(f"{snapshot}/", "create_revision", "EQUAL", 0, prefix_end(f"{snapshot}/")),
        ]
        succeeded, responses = self._txn(compare, [txn.put(snapshot, raw, lease)])
        if not succeeded:
            raise stale(session_key, 0, "written")
        self._count(len(raw))
        version = int(responses[0].response_put.header.revision)
        position = LogPosition(snapshot_bytes=len(data), lease=lease)
        return StoredState(data, version, owner, position, applied)

    def _fold(
        self,
        session_key: str,
        data: bytes,
        owner: str,
        previous: StoredState,
        applied: Applied = (),
    ) -> StoredState:
        snapshot = self.key(session_key)
        lease = previous.log.lease
        self._keep_alive(lease)
        raw = encode_envelope(data, owner=owner, applied=applied)
        ops = [
            txn.delete(f"{snapshot}/", prefix_end(f"{snapshot}/")),
            txn.put(snapshot, raw, lease),
        ]
        version = self._write(session_key, previous, ops, len(raw))
        position = LogPosition(snapshot_bytes=len(data), lease=lease)
        return StoredState(data, version, owner, position, applied)

    def _position(self, session_key: str, expected_version: int) -> StoredState:
        """What a write at ``expected_version`` compares, read from etcd (keys only)."""
        read = self._read(session_key, keys_only=True)
        newest = read.newest
        if newest is None or newest.mod_revision != expected_version:
            raise stale(session_key, expected_version, "written")
        record = self._record_id(newest.key) if newest is not read.snapshot else 0
        lease = read.snapshot.lease if read.snapshot else 0
        return StoredState(b"", expected_version, "", LogPosition(record=record, lease=lease))

    def _unchanged(self, session_key: str, previous: StoredState) -> list[Any]:
        """Compares for "nothing of the session changed since ``previous.version``"."""
        snapshot = self.key(session_key)
        version = previous.version
        newest = (
            self.record_key(session_key, previous.log.record) if previous.log.record else snapshot
        )
        return [
            txn.compare(snapshot, "mod_revision", "LESS", version + 1),
            txn.compare(
                f"{snapshot}/", "mod_revision", "LESS", version + 1, prefix_end(f"{snapshot}/")
            ),
            txn.compare(newest, "mod_revision", "EQUAL", version),
        ]

    def _write(self, session_key: str, previous: StoredState, ops: list[Any], size: int) -> int:
        succeeded, responses = self._txn(self._unchanged(session_key, previous), ops)
        if not succeeded:
            raise stale(session_key, previous.version, "written")
        self._count(size)
        return int(responses[-1].response_put.header.revision)

    def _count(self, size: int) -> None:
        with self._lock:
            self.bytes_written += size

    def _record_id(self, key: str) -> int:
        return int(key.rsplit("/", 1)[1])

    def _read(self, session_key: str, *, keys_only: bool) -> _Read:
        snapshot = self.key(session_key)
        ranges = [
            txn.read(snapshot, keys_only=keys_only),
            txn.read(f"{snapshot}/", prefix_end(f"{snapshot}/"), keys_only=keys_only),
        ]
        _ok, responses = self._txn([], ranges)
        found = [
            [
                _Key(kv.key.decode(), bytes(kv.value), int(kv.mod_revision), int(kv.lease))
                for kv in response.response_range.kvs
            ]
            for response in responses
        ]
        records = tuple(k for k in found[1] if self._is_record(k.key, snapshot))
        return _Read(found[0][0] if found[0] else None, records)

    @staticmethod
    def _is_record(key: str, snapshot: str) -> bool:
        suffix = key[len(snapshot) + 1 :]
        return len(suffix) == _ID_DIGITS and suffix.isdigit()

    def _grant(self) -> int:
        if self.ttl_s is None:
            return 0
        lease = self._etcd.grant_lease(math.ceil(self.ttl_s * 1.5))
        with self._lock:
            self._remember(lease)
        return lease

    def _keep_alive(self, lease: int) -> None:
        """Keep the session's lease alive when ``ttl_s`` / 2 passed since this store last
        did (a keep-alive is not a raft write: it does not grow etcd's database)."""
        if not lease or self.ttl_s is None:
            return
        with self._lock:
            last = self._refreshed.get(lease, 0.0)
            if time.monotonic() - last < self.ttl_s / 2:
                return
            self._remember(lease)
        self._etcd.refresh_lease(lease)

    def _remember(self, lease: int) -> None:
        # Called with _lock held.
        self._refreshed[lease] = time.monotonic()
        self._refreshed.move_to_end(lease)
        while len(self._refreshed) > _MAX_LEASES_TRACKED:
            self._refreshed.popitem(last=False)

    def _txn(self, compare: list[Any], success: list[Any]) -> tuple[bool, list[Any]]:
        try:
            return self._etcd.txn(compare, success)
        except LeaseNotFound as exc:
            raise LeaseNotFound(
                "the session's etcd lease expired (the session expired): nothing was written",
                exc.session_key,
            ) from exc
