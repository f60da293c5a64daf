"""The session store: where a session's state survives its shard (docs/migration.md).

A :class:`SessionStore` keeps each session's state as a snapshot plus a log of turn
records (:mod:`shardroute.sessions.envelope`), with a version that changes on every
write, and writes only by compare-and-swap on that version: of two shards that both
think they own a session, only one can extend its history. A turn's checkpoint writes
what the turn added (:meth:`SessionStore.checkpoint`); every so often (:class:`FoldPolicy`)
it writes a new snapshot instead, so a conversation of n turns costs O(n) bytes, not
O(n²). Sessions end (:meth:`SessionStore.delete`) or expire after ``ttl_s`` idle.

Implementations: :class:`~shardroute.sessions.EtcdSessionStore` (the default; keys under
``state/<session_key>``, docs/etcd-schema.md), :class:`~shardroute.sessions.RedisSessionStore`
(Redis or Redis Cluster, for volume) and :class:`InMemorySessionStore` (tests, single
process). Another database plugs in by implementing the protocol. The store
knows nothing about shards beyond the ``owner`` string it records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from shardroute._validate import seconds
from shardroute.discovery.keys import KeySchema
from shardroute.errors import (
    ConfigError,
    EtcdUnavailable,
    SessionStoreUnavailable,
    StaleState,
    StateTooLarge,
)
from shardroute.sessions.applied import Applied, added
from shardroute.sessions.envelope import (
    FoldPolicy,
    LogPosition,
    StoredState,
    encode_envelope,
    encode_record,
    record_keep,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "STORE_UNAVAILABLE",
    "InMemorySessionStore",
    "SessionStore",
]

DEFAULT_MAX_BYTES = 1024 * 1024
"""Default limit on one session's state: 1 MiB (etcd's default request limit is 1.5 MiB)."""

STORE_UNAVAILABLE = (EtcdUnavailable, SessionStoreUnavailable)
"""What a store raises when its backend cannot be reached (etcd; Redis), for ``except``."""


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions' state lives between turns, written by compare-and-swap.

    Contract (every implementation, tested against both of ours):

    - ``load`` returns the latest :class:`StoredState` (the snapshot with every turn
      record applied, checked) or None when there is none (never saved, ended, expired).
    - ``checkpoint`` saves one turn's new state given the :class:`StoredState` it started
      from: a compare-and-swap on ``previous.version`` (None: the session must have no
      stored state) that writes a turn record (what changed) or, when the
      :attr:`fold` policy says so, a new snapshot. Returns the new :class:`StoredState`.
      Optionally (``records_turns = True``) it takes ``applied=``, the session's record
      of applied turns after this turn (:mod:`shardroute.sessions.applied`), saved in the
      same write and returned by ``load`` (a turn record carries the turns it adds).
    - ``save`` writes a whole state (a snapshot, the log folded away) by compare-and-swap
      on ``expected_version`` (``0``: the session must have no stored state yet) and
      returns the new version (> 0).
    - A lost compare-and-swap raises :class:`~shardroute.errors.StaleState` and writes
      nothing; ``len(data) > max_bytes`` raises :class:`~shardroute.errors.StateTooLarge`
      ``(session_key, size, limit)`` before any I/O: never a truncated write.
    - ``delete`` removes the state (snapshot and log); with ``expected_version`` it is a
      compare-and-swap too; without, unconditional and idempotent. Returns whether there
      was state to delete.
    - With ``ttl_s`` set, a session with no write for ``ttl_s`` seconds expires (its
      state is gone, as if deleted; etcd: between ``ttl_s`` and 1.5 * ``ttl_s``).
    - A backend that cannot be reached raises one of :data:`STORE_UNAVAILABLE`:
      :class:`~shardroute.errors.EtcdUnavailable` (etcd),
      :class:`~shardroute.errors.SessionStoreUnavailable` (Redis, other stores); safe to
      retry: nothing, or the whole write, was done.

    Thread contract: one store may be shared by threads.
    """

    max_bytes: int
    """The largest state, in bytes, that a write accepts."""

    ttl_s: float | None
    """Idle sessions expire after this many seconds (None: never)."""

    fold: FoldPolicy
    """When a checkpoint writes a snapshot instead of a turn record."""

    bytes_written: int
    """Bytes of values this store wrote (snapshots and records, envelopes included)."""

    def load(self, session_key: str) -> StoredState | None:
        """The session's stored state, or None when it has none."""
        ...

    def checkpoint(
        self, session_key: str, data: bytes, *, owner: str, previous: StoredState | None
    ) -> StoredState:
        """Save one turn: ``data`` is the whole new state, ``previous`` what it grew from
        (as loaded or returned by the last checkpoint; None for a new session).

        Raises:
            StaleState: the stored version is not ``previous.version``; nothing written.
            StateTooLarge: ``len(data) > max_bytes``; nothing written.
            EtcdUnavailable, SessionStoreUnavailable: the backend is unreachable.
        """
        ...

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Write ``data`` as the session's whole state if its version is ``expected_version``.

        Raises:
            StaleState: the stored version is not ``expected_version``; nothing written.
            StateTooLarge: ``len(data) > max_bytes``; nothing written.
            EtcdUnavailable, SessionStoreUnavailable: the backend is unreachable.
        """
        ...

    def delete(self, session_key: str, *, expected_version: int | None = None) -> bool:
        """Remove the session's state (only if at ``expected_version``, when given);
        True when there was state.

        Raises:
            StaleState: ``expected_version`` was given and does not match; nothing deleted.
            EtcdUnavailable, SessionStoreUnavailable: the backend is unreachable.
        """
        ...


# -- shared argument checks (before any I/O) ---------------------------------------------

_KEY_CHECK = KeySchema("sessions")


def check_max_bytes(max_bytes: int) -> int:
    """``max_bytes`` if valid, else :class:`~shardroute.errors.ConfigError`."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"max_bytes must be an int > 0, got {max_bytes!r}")
    return max_bytes


def check_ttl(ttl_s: float | None) -> float | None:
    """``ttl_s`` if valid (None or > 0), else :class:`~shardroute.errors.ConfigError`."""
    if ttl_s is None:
        return None
    seconds("ttl_s", ttl_s)
    return float(ttl_s)


def check_save(
    session_key: str, data: bytes, owner: str, expected_version: int, max_bytes: int
) -> bytes:
    """The arguments of a write, checked in the contract's order (key, owner, version,
    type, size); returns ``data`` as bytes."""
    _KEY_CHECK.state(session_key)
    if not isinstance(owner, str) or not owner:
        raise ConfigError(f"owner must be a non-empty shard id, got {owner!r}")
    check_version(expected_version)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(f"state must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise StateTooLarge(session_key, len(data), max_bytes)
    return data


def turns_after(previous: StoredState | None, applied: Applied | None) -> Applied:
    """The applied-turn record a checkpoint saves: ``applied``, or (None) the one
    ``previous`` had."""
    if applied is not None:
        return applied
    return previous.applied if previous is not None else ()


def check_version(version: int | None) -> None:
    """An ``expected_version`` must be None or an int >= 0."""
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"expected_version must be an int >= 0, got {version!r}")


def stale(session_key: str, expected_version: int, what: str) -> StaleState:
    """The :class:`~shardroute.errors.StaleState` of a lost compare-and-swap."""
    wanted = "no stored state" if expected_version == 0 else f"version {expected_version}"
    return StaleState(
        f"session {session_key!r}: expected {wanted}, but the stored state changed "
        f"(another writer got there first, or it ended or expired); nothing was {what}. "
        "Reload and decide again",
        session_key,
    )


# -- in memory ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """One session in memory: the latest state and its log position (the records
    themselves are not kept: the folded bytes are, and the position says what a store
    with a real log would hold)."""

    state: StoredState
    written_at: float


class InMemorySessionStore:
    """A :class:`SessionStore` in this process's memory, for tests and single-process use.

    Same semantics as :class:`~shardroute.sessions.EtcdSessionStore`, turn records and
    folds included (it encodes the same records and takes the same fold decisions, so
    ``bytes_written`` matches); versions come from one counter shared by all keys (like etcd's
    revision). Idle sessions expire exactly ``ttl_s`` after their last write, checked
    on access and by :meth:`expire`. Thread-safe; every operation is one locked step.
    """

    records_turns = True
    """``checkpoint`` takes ``applied=`` (:mod:`shardroute.sessions.applied`)."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        ttl_s: float | None = None,
        fold: FoldPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = check_max_bytes(max_bytes)
        self.ttl_s = check_ttl(ttl_s)
        self.fold = fold if fold is not None else FoldPolicy()
        self._clock = clock
        # Mutable state, changed only under _lock: the sessions, the version counter and
        # the bytes written.
        self._lock = threading.Lock()
        self._states: dict[str, _Held] = {}
        self._revision = 0
        self.bytes_written = 0

    def _current(self, session_key: str) -> _Held | None:
        # Called with _lock held: the session, unless it expired (then it is removed).
        held = self._states.get(session_key)
        ttl = self.ttl_s
        if held is not None and ttl is not None and self._clock() - held.written_at >= ttl:
            del self._states[session_key]
            return None
        return held

    def load(self, session_key: str) -> StoredState | None:
        """The session's stored state, or None (see :class:`SessionStore`)."""
        _KEY_CHECK.state(session_key)
        with self._lock:
            held = self._current(session_key)
            return None if held is None else held.state

    def version(self, session_key: str) -> int:
        """The session's stored version (0 when none), without copying its state."""
        _KEY_CHECK.state(session_key)
        with self._lock:
            held = self._current(session_key)
            return held.state.version if held else 0

    def checkpoint(
        self,
        session_key: str,
        data: bytes,
        *,
        owner: str,
        previous: StoredState | None,
        applied: Applied | None = None,
    ) -> StoredState:
        """Save one turn (see :meth:`SessionStore.checkpoint`)."""
        expected = 0 if previous is None else previous.version
        applied = turns_after(previous, applied)
        data = check_save(session_key, data, owner, expected, self.max_bytes)
        with self._lock:
            held = self._current(session_key)
            if (held.state.version if held else 0) != expected:
                raise stale(session_key, expected, "written")
            if held is None or previous is None:
                return self._snapshot(session_key, data, owner, applied)
            keep = record_keep(previous, data, self.fold)
            if keep is None:
                return self._snapshot(session_key, data, owner, applied)
            new = added(previous.applied, applied)
            record = encode_record(previous.data, data, owner=owner, keep=keep, applied=new)
            self._revision += 1
            position = previous.log.appended(len(data) - keep, previous.version)
            state = StoredState(data, self._revision, owner, position, applied)
            held.state, held.written_at = state, self._clock()
            self.bytes_written += len(record)
            return state

    def _snapshot(
        self, session_key: str, data: bytes, owner: str, applied: Applied = ()
    ) -> StoredState:
        # Called with _lock held, the compare-and-swap done.
        raw = encode_envelope(data, owner=owner, applied=applied)
        self._revision += 1
        position = LogPosition(snapshot_bytes=len(data))
        state = StoredState(data, self._revision, owner, position, applied)
        self._states[session_key] = _Held(state, self._clock())
        self.bytes_written += len(raw)
        return state

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Compare-and-swap the session's whole state (see :meth:`SessionStore.save`)."""
        data = check_save(session_key, data, owner, expected_version, self.max_bytes)
        with self._lock:
            held = self._current(session_key)
            if (held.state.version if held else 0) != expected_version:
                raise stale(session_key, expected_version, "written")
            return self._snapshot(session_key, data, owner).version

    def delete(self, session_key: str, *, expected_version: int | None = None) -> bool:
        """Remove the session's state (see :meth:`SessionStore.delete`)."""
        _KEY_CHECK.state(session_key)
        check_version(expected_version)
        with self._lock:
            held = self._current(session_key)
            if expected_version is not None and (
                (held.state.version if held else 0) != expected_version
            ):
                raise stale(session_key, expected_version, "deleted")
            if held is None:
                return False
            self._revision += 1
            del self._states[session_key]
            return True

    def expire(self) -> int:
        """Remove every session idle for ``ttl_s`` or more; returns how many."""
        if self.ttl_s is None:
            return 0
        with self._lock:
            cutoff = self._clock() - self.ttl_s
            idle = [key for key, held in self._states.items() if held.written_at <= cutoff]
            for key in idle:
                del self._states[key]
            return len(idle)
