"""The session store: where a session's state survives its shard (docs/migration.md).

A :class:`SessionStore` keeps one opaque blob of state per session key, with a version
that changes on every write, and writes only by compare-and-swap on that version: of two
shards that both think they own a session, only one can extend its history.

Two implementations: :class:`EtcdSessionStore` (the default; ``state/<session_key>`` keys,
docs/etcd-schema.md) and :class:`InMemorySessionStore` (tests, single process). Another
database plugs in by implementing the protocol. The store knows nothing about shards
beyond the ``owner`` string it records.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from shardroute.discovery._etcd import EtcdClient
from shardroute.discovery.keys import KeySchema
from shardroute.errors import ConfigError, MalformedRecord, StaleState, StateTooLarge

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ENVELOPE_MAGIC",
    "EtcdSessionStore",
    "InMemorySessionStore",
    "SessionStore",
    "StoredState",
    "decode_envelope",
    "encode_envelope",
]

DEFAULT_MAX_BYTES = 1024 * 1024
"""Default limit on one session's state: 1 MiB (etcd's default request limit is 1.5 MiB)."""

ENVELOPE_MAGIC = b"SRS1"
"""First bytes of every value under ``state/``: format version 1 of the envelope."""

_HEADER_LEN = struct.Struct(">I")
_PREFIX_LEN = len(ENVELOPE_MAGIC) + _HEADER_LEN.size
_MAX_HEADER_BYTES = 64 * 1024  # a real header is ~80 bytes; anything bigger is corrupt


@dataclass(frozen=True, slots=True)
class StoredState:
    """One session's stored state as read from a :class:`SessionStore`.

    ``data`` is the state bytes, exactly as saved; ``version`` is what the next
    :meth:`SessionStore.save` must name as ``expected_version`` (the etcd ``mod_revision``
    of the key, a counter in memory; never 0); ``owner`` is the shard that wrote it.
    """

    data: bytes
    version: int
    owner: str


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions' state lives between turns, written by compare-and-swap.

    Contract (every implementation, tested against both of ours):

    - ``load`` returns the latest :class:`StoredState` or None when there is none.
    - ``save`` is a compare-and-swap on the version: it writes only if the stored
      version is ``expected_version`` (``0``: the session must have no stored state
      yet) and returns the new version (> 0). On a mismatch it raises
      :class:`~shardroute.errors.StaleState` and writes nothing.
    - ``len(data) > max_bytes`` raises :class:`~shardroute.errors.StateTooLarge`
      ``(session_key, size, limit)`` before any I/O: never a truncated write.
    - ``delete`` removes the state; with ``expected_version`` it is a compare-and-swap
      too (:class:`~shardroute.errors.StaleState` on a mismatch, nothing deleted);
      without, it is unconditional and idempotent.
    - A backend that cannot be reached raises :class:`~shardroute.errors.EtcdUnavailable`
      (safe to retry: nothing, or the whole value, was written).

    Thread contract: one store may be shared by threads.
    """

    max_bytes: int
    """The largest state, in bytes, that :meth:`save` accepts."""

    def load(self, session_key: str) -> StoredState | None:
        """The session's stored state, or None when it has none."""
        ...

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Write ``data`` as the session's state if its version is ``expected_version``.

        Args:
            session_key: the session.
            data: the whole state (at most ``max_bytes``).
            owner: the shard id writing it (recorded with the state).
            expected_version: the version last read or written; 0 when the session must
                not have stored state yet.

        Returns:
            The new version.

        Raises:
            StaleState: the stored version is not ``expected_version``; nothing written.
            StateTooLarge: ``len(data) > max_bytes``; nothing written.
            EtcdUnavailable: the backend is unreachable.
        """
        ...

    def delete(self, session_key: str, *, expected_version: int | None = None) -> None:
        """Remove the session's state (only if at ``expected_version``, when given).

        Raises:
            StaleState: ``expected_version`` was given and does not match; nothing deleted.
            EtcdUnavailable: the backend is unreachable.
        """
        ...


# -- envelope (pure) ---------------------------------------------------------------------


def encode_envelope(data: bytes, *, owner: str, ts: float | None = None) -> bytes:
    """Wrap state bytes for the ``state/`` key (docs/migration.md, "Keys").

    ``b"SRS1"`` + 4-byte big-endian header length + JSON header
    ``{"owner", "size", "crc32", "ts"}`` + the data. ``ts`` defaults to now (unix s).
    """
    header = {
        "owner": owner,
        "size": len(data),
        "crc32": zlib.crc32(data),
        "ts": round(time.time() if ts is None else ts, 3),
    }
    raw_header = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return b"".join((ENVELOPE_MAGIC, _HEADER_LEN.pack(len(raw_header)), raw_header, data))


def decode_envelope(key: str, raw: bytes, version: int) -> StoredState:
    """Unwrap a ``state/`` value written by :func:`encode_envelope`.

    Checks the magic, the header, the size and the CRC-32; raises
    :class:`~shardroute.errors.MalformedRecord` naming ``key`` on any mismatch.
    """
    if raw[: len(ENVELOPE_MAGIC)] != ENVELOPE_MAGIC:
        raise MalformedRecord(key, f"not a session state envelope (magic {raw[:4]!r})")
    if len(raw) < _PREFIX_LEN:
        raise MalformedRecord(key, "truncated envelope: no header length")
    (header_len,) = _HEADER_LEN.unpack_from(raw, len(ENVELOPE_MAGIC))
    if header_len > _MAX_HEADER_BYTES or _PREFIX_LEN + header_len > len(raw):
        raise MalformedRecord(
            key, f"header length {header_len} does not fit a {len(raw)}-byte value"
        )
    header_end = _PREFIX_LEN + header_len
    try:
        header: Any = json.loads(raw[_PREFIX_LEN:header_end])
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(key, f"envelope header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise MalformedRecord(key, "envelope header is not a JSON object")
    owner, size, crc = header.get("owner"), header.get("size"), header.get("crc32")
    if not isinstance(owner, str):
        raise MalformedRecord(key, f"envelope 'owner' must be a string, got {owner!r}")
    for name, value in (("size", size), ("crc32", crc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MalformedRecord(key, f"envelope {name!r} must be an int >= 0, got {value!r}")
    data = raw[header_end:]
    if len(data) != size:
        raise MalformedRecord(key, f"state is {len(data)} bytes, the header says {size}")
    actual_crc = zlib.crc32(data)
    if actual_crc != crc:
        raise MalformedRecord(key, f"CRC-32 mismatch: header {crc}, state {actual_crc}")
    return StoredState(data=bytes(data), version=version, owner=owner)


# -- shared argument checks (before any I/O) ---------------------------------------------

_KEY_CHECK = KeySchema("sessions")


def _check_max_bytes(max_bytes: int) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"max_bytes must be an int > 0, got {max_bytes!r}")
    return max_bytes


def _check_save(
    session_key: str, data: bytes, owner: str, expected_version: int, max_bytes: int
) -> bytes:
    _KEY_CHECK.state(session_key)
    if not isinstance(owner, str) or not owner:
        raise ConfigError(f"owner must be a non-empty shard id, got {owner!r}")
    _check_version(expected_version)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(f"state must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise StateTooLarge(session_key, len(data), max_bytes)
    return data


def _check_version(version: int | None) -> None:
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"expected_version must be an int >= 0, got {version!r}")


def _stale(session_key: str, expected_version: int, what: str) -> StaleState:
    wanted = "no stored state" if expected_version == 0 else f"version {expected_version}"
    return StaleState(
        f"session {session_key!r}: expected {wanted}, but the stored state changed "
        f"(another writer got there first); nothing was {what}. Reload and decide again",
        session_key,
    )


# -- implementations ---------------------------------------------------------------------


class InMemorySessionStore:
    """A :class:`SessionStore` in this process's memory, for tests and single-process use.

    Same semantics as :class:`EtcdSessionStore`; versions come from one counter shared by
    all keys (like etcd's revision). Thread-safe; every operation is one locked step.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = _check_max_bytes(max_bytes)
        # Mutable state, changed only under _lock: the states and the version counter.
        self._lock = threading.Lock()
        self._states: dict[str, StoredState] = {}
        self._revision = 0

    def load(self, session_key: str) -> StoredState | None:
        """The session's stored state, or None (see :class:`SessionStore`)."""
        _KEY_CHECK.state(session_key)
        with self._lock:
            return self._states.get(session_key)

    def version(self, session_key: str) -> int:
        """The session's stored version (0 when none), without copying its state."""
        _KEY_CHECK.state(session_key)
        with self._lock:
            current = self._states.get(session_key)
            return current.version if current else 0

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Compare-and-swap the session's state (see :meth:`SessionStore.save`)."""
        data = _check_save(session_key, data, owner, expected_version, self.max_bytes)
        with self._lock:
            current = self._states.get(session_key)
            if (current.version if current else 0) != expected_version:
                raise _stale(session_key, expected_version, "written")
            self._revision += 1
            self._states[session_key] = StoredState(data, self._revision, owner)
            return self._revision

    def delete(self, session_key: str, *, expected_version: int | None = None) -> None:
        """Remove the session's state (see :meth:`SessionStore.delete`)."""
        _KEY_CHECK.state(session_key)
        _check_version(expected_version)
        with self._lock:
            current = self._states.get(session_key)
            if expected_version is not None and (
                (current.version if current else 0) != expected_version
            ):
                raise _stale(session_key, expected_version, "deleted")
            if current is not None:
                self._revision += 1
                del self._states[session_key]


class EtcdSessionStore:
    """A :class:`SessionStore` in etcd: one key ``/shardroute/<service>/state/<session_key>``
    per session, its value the envelope of docs/migration.md, its version the key's
    ``mod_revision``; every write is one etcd transaction comparing that revision.

    ``max_bytes`` (default 1 MiB) bounds the state. etcd refuses a request larger than its
    ``--max-request-bytes`` (1.5 MiB by default): keep ``max_bytes`` plus about 200 bytes
    of envelope below the server's limit, or raise that limit on every etcd member.

    Construction does no I/O. Thread-safe (the :class:`EtcdClient` is shared).
    """

    def __init__(
        self, etcd: EtcdClient, service: str, *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_bytes = _check_max_bytes(max_bytes)
        self._etcd = etcd
        self._keys = KeySchema(service)

    @property
    def service(self) -> str:
        """The service whose ``state/`` keys this store uses."""
        return self._keys.service

    def key(self, session_key: str) -> str:
        """The etcd key holding a session's state."""
        return self._keys.state(session_key)

    def version(self, session_key: str) -> int:
        """The session's stored version (0 when none), read without its value (an etcd
        keys-only read: cheap even for a 1 MiB state)."""
        return self._etcd.get_version(self._keys.state(session_key))

    def load(self, session_key: str) -> StoredState | None:
        """The session's stored state, or None (see :class:`SessionStore`).

        Raises:
            MalformedRecord: the value is not a valid envelope (wrong magic, size or
                CRC-32); the message names the key.
            EtcdUnavailable: etcd is unreachable.
        """
        key = self._keys.state(session_key)
        found = self._etcd.get_with_version(key)
        if found is None:
            return None
        raw, version = found
        return decode_envelope(key, raw, version)

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Compare-and-swap the session's state (see :meth:`SessionStore.save`)."""
        data = _check_save(session_key, data, owner, expected_version, self.max_bytes)
        key = self._keys.state(session_key)
        revision = self._etcd.put_if_version(
            key, encode_envelope(data, owner=owner), expected_version
        )
        if revision is None:
            raise _stale(session_key, expected_version, "written")
        return revision

    def delete(self, session_key: str, *, expected_version: int | None = None) -> None:
        """Remove the session's state (see :meth:`SessionStore.delete`)."""
        key = self._keys.state(session_key)
        _check_version(expected_version)
        if expected_version is None:
            self._etcd.delete(key)
        elif not self._etcd.delete_if_version(key, expected_version):
            raise _stale(session_key, expected_version, "deleted")
