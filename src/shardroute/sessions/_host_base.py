"""The state every part of a shard's :class:`~shardroute.sessions.SessionHost` shares:
the held sessions, hints and fences, and the reads behind ownership decisions.

Mutable state (``_held``, ``_hints``, ``_floors``) changes only under ``_cond``, in short
steps that do no I/O; store and etcd I/O happen between those steps, on an entry marked
busy so no other call of the same session touches it meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from shardroute.errors import (
    EtcdUnavailable,
    MalformedRecord,
    Refused,
)
from shardroute.model import Override, Topology
from shardroute.sessions.applied import Applied, TurnMemory
from shardroute.sessions.codecs import JsonCodec, SessionCodec
from shardroute.sessions.envelope import LogPosition
from shardroute.sessions.ownership import epoch_is_stale, newest_override
from shardroute.sessions.store import STORE_UNAVAILABLE
from shardroute.telemetry import Telemetry

log = logging.getLogger("shardroute.server")

_MAX_HINTS = 65536
_SIDE_WORKERS = 16
"""Threads for the reads a migration call runs beside its fence check (an import's
store version read): at most this many imports overlap them, later ones wait a little."""
_MALFORMED_REMEMBERED = 1024
"""Session keys whose malformed override was logged (at WARNING once; DEBUG after)."""


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session a shard holds, as ``ListSessions`` reports it."""

    session_key: str
    state_bytes: int = 0
    last_used_ts: float = 0.0


class _Store(Protocol):
    max_bytes: int

    def load(self, session_key: str) -> Any: ...

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int: ...

    def delete(self, session_key: str, *, expected_version: int | None = None) -> Any: ...


class _Overrides(Protocol):
    @property
    def timeout(self) -> float: ...

    def get(self, session_key: str) -> Override | None: ...

    def swap(
        self,
        session_key: str,
        expected: Override | None,
        new: Override | None,
        *,
        lease: int | None = None,
    ) -> Override | None: ...


FREEZE_LIMIT_S = 120.0
"""How long a session stays frozen for a move that neither commits nor rolls back (a
mover that died after its export): then the frozen copy is dropped (its state is in the
store) and the next turn reclaims the session (docs/migration.md)."""

UNDECODED: Any = object()
"""The state of an imported entry whose bytes are not decoded yet: decoded at its first
use (a turn, the warm hook, :meth:`peek`), not on the move's path; a session drained and
never used again is never decoded."""


@dataclass(slots=True, eq=False)
class _Entry:
    """One held session (mutated only under the host's condition)."""

    state: Any
    data: bytes
    version: int
    log: LogPosition | None = None
    """Where the stored turn log stands at ``version`` (None: unknown, e.g. after an
    import; the next checkpoint then writes a whole snapshot)."""
    busy: bool = False
    frozen: bool = False
    imported: bool = False
    loading: bool = False
    last_used: float = 0.0
    frozen_epoch: int = 0
    """The fence epoch of the export that froze the entry (meaningful when frozen)."""
    frozen_at: float = 0.0
    """When the export froze it (the host's clock): a freeze no commit or rollback
    ends within :data:`FREEZE_LIMIT_S` is dropped like an idle copy."""
    releases: int = 0
    """How many ReleaseSession calls reached this entry (an export waiting for the
    in-flight turn refuses to freeze if one arrived meanwhile)."""
    applied: Applied | None = ()
    """The session's record of recently applied turns as saved at ``version`` (None:
    unknown, after an import by version; read from the store before the next turn)."""
    lease: int | None = None
    """The shard's lease when it took the session over (or first served an import): a
    copy held under another lease is not served (the lease expired meanwhile, so the
    session may have moved); it is taken over again, re-checking ownership."""
    elsewhere: bool = False
    """A topology showed the session owned by another shard while this copy was in a
    turn: the copy is dropped when the turn ends (see :meth:`HostBase.topology_changed`)."""
    placed: bool = False
    """Taken over with nothing stored from a call placed here on purpose (spill, zone
    fallback, failover, a followed redirect: ``PLACED_REASONS``): its first save writes
    an override naming this shard (put off to a later save when its deadline is near)."""


class HostBase:
    """The shared state and reads of :class:`~shardroute.sessions.SessionHost` (see its
    docstring for the constructor's arguments)."""

    def __init__(
        self,
        shard_id: str,
        *,
        codec: SessionCodec[Any] | None = None,
        hold_timeout_s: float = 5.0,
        max_state_bytes: int = 256 * 1024 * 1024,
        on_warm: Callable[[str, Any], None] | None = None,
        idle_ttl_s: float = 600.0,
        wait_workers: int = 64,
        clock: Callable[[], float] = time.time,
        checkpoint_retry_s: float = 10.0,
    ) -> None:
        self.shard_id = shard_id
        self.checkpoint_retry_s = checkpoint_retry_s
        """How long a checkpoint is retried while the store is unreachable (0: never)."""
        self.codec: SessionCodec[Any] = codec if codec is not None else JsonCodec()
        self.hold_timeout_s = hold_timeout_s
        self.max_state_bytes = max_state_bytes
        self.idle_ttl_s = idle_ttl_s
        self._on_warm = on_warm
        self._clock = clock
        self._wait_workers = wait_workers
        self._executor: ThreadPoolExecutor | None = None
        self._side: ThreadPoolExecutor | None = None
        self._next_sweep = clock() + self._sweep_interval()
        self._store: _Store | None = None
        self._overrides: _Overrides | None = None
        self._malformed_seen: set[str] = set()  # keys whose bad override was logged
        self._topology: Callable[[], Topology | None] = lambda: None
        self._lease: Callable[[], int | None] = lambda: None
        self._leased = False  # attached with a lease: None from it means not live now
        self._ready: Callable[[], bool] = lambda: True  # topology read, lease live
        self._admit: Callable[[str, Topology], str | None] | None = None  # shard_bound
        # Mutable state, changed only under _cond: the held sessions, and what movers
        # told this shard about overrides (ahead of the topology watch), bounded LRU.
        self._cond = threading.Condition()
        self._held: dict[str, _Entry] = {}
        self._seen_overrides: object = None  # the last snapshot's overrides looked at
        self._hints: OrderedDict[str, Override] = OrderedDict()
        # Epochs a rollback told this shard (ReleaseSession to itself): they fence stale
        # migration calls but say nothing new about ownership, so they are no hints.
        self._floors: OrderedDict[str, int] = OrderedDict()
        self.takeovers_total = 0
        """Sessions this shard took over from the store."""
        self.redirects_total = 0
        """Calls answered with a redirect."""
        self.placed_elsewhere_total = 0
        """New sessions redirected because this shard was over its bound (shard_bound)."""
        self.conflicts_total = 0
        """Checkpoints that lost their compare-and-swap (turn aborted, copy dropped)."""
        self.evictions_total = 0
        """Idle sessions evicted (``idle_ttl_s``)."""
        self.dropped_elsewhere_total = 0
        """Held copies forgotten because a topology showed another shard owning them."""
        self.reclaims_total = 0
        """Abandoned fences this shard reclaimed after a hold timed out."""
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.checkpoints_total = 0
        """Turns saved to the session store."""
        self.checkpoint_retries_total = 0
        """Checkpoint attempts repeated (read back, then written again if need be) after
        the store was unreachable (``checkpoint_retry_s``)."""
        self.store_bytes_written = 0
        self.telemetry = Telemetry()
        """Where checkpoint metrics go (the shard server sets its own)."""
        """Bytes the session store wrote (its ``bytes_written``, as of the last checkpoint)."""
        self.ended_total = 0
        """Sessions ended by :meth:`end_session`."""
        self.turn_memory = TurnMemory()
        """How many applied turns per session are remembered, with their replies, and
        saved with the state (docs/client.md, "Exactly-once turns")."""
        self.replayed_total = 0
        """Turns answered from the record of applied turns instead of being run again."""
        self.store_suspect = False
        """A checkpoint found the store unreachable and no call has seen it answer since
        (held sessions are then served only after a version read succeeds)."""

    @property
    def store(self) -> Any:
        """The session store (set once the server started)."""
        return self._store

    @property
    def executor(self) -> Executor:
        """The executor the asyncio server runs blocking :meth:`begin` calls on: its
        own, so calls waiting for a busy or moving session never take the threads the
        in-flight turn's checkpoint needs (created on first use)."""
        with self._cond:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._wait_workers, thread_name_prefix=f"shardroute-{self.shard_id}-session"
                )
            return self._executor

    def _side_executor(self) -> Executor | None:
        """A few threads for a read a migration call runs beside another one (created on
        first use); None once closed (the caller then reads in turn)."""
        with self._cond:
            if self._side is None and not self._closed.is_set():
                self._side = ThreadPoolExecutor(
                    _SIDE_WORKERS, thread_name_prefix=f"shardroute-{self.shard_id}-side"
                )
            return self._side

    def close(self) -> None:
        """Shut the executors and the sweeper down (the server calls it once stopped)."""
        self._closed.set()
        with self._cond:
            executor, self._executor = self._executor, None
            side, self._side = self._side, None
            self._cond.notify_all()
        for pool in (executor, side):
            if pool is not None:
                pool.shutdown(wait=False)

    def topology_changed(self, topology: object = None) -> None:
        """The topology source's subscriber (every snapshot, in order): forget held
        copies whose session the snapshot shows owned by another shard, and wake held
        calls so they decide again.

        A copy held here while another shard owns the session is stale as soon as that
        shard writes a turn. It used to be dropped only when a call reached this shard;
        an override can also vanish before that (its owner's lease expired: the owner
        died), and the copy would then be served again as if nothing had happened,
        without the other shard's turns (a turn's write would fail its compare-and-swap,
        but a read would answer from the stale copy). A copy frozen for a move whose end
        (commit or rollback) no release brought here is settled as the snapshot shows
        it: dropped after a commit elsewhere, unfrozen after a rollback (else a move of
        the session back here would find it and be refused). Imports not yet committed
        and copies still loading are left alone; one in a turn is dropped when the turn
        ends.
        """
        overrides = getattr(topology, "overrides", None)
        with self._cond:
            if overrides and overrides is not self._seen_overrides:
                self._seen_overrides = overrides
                self._forget_owned_elsewhere(overrides)
            self._cond.notify_all()

    def _settle_frozen(self, key: str, entry: _Entry | None, known: Override | None) -> Any:
        """Settle a frozen copy whose move ended (the migration side, ``Handoff``, does
        it); returns the entry, or None when dropped. Called with ``_cond`` held."""
        return entry

    def _forget_owned_elsewhere(self, overrides: Any) -> None:
        # Called with _cond held. Walks the held sessions, usually far fewer than the
        # overrides of the whole service.
        me, hints = self.shard_id, self._hints
        stale = []
        for key, entry in list(self._held.items()):
            if entry.imported or entry.loading:
                continue
            found = overrides.get(key)
            if found is None:
                continue
            known = newest_override(found, hints.get(key))
            if entry.frozen:  # its move ended without a release reaching this shard?
                self._settle_frozen(key, entry, known)
                continue
            if known is not None and known.owner != me:
                if entry.busy:
                    entry.elsewhere = True
                else:
                    stale.append(key)
        for key in stale:
            del self._held[key]
        self.dropped_elsewhere_total += len(stale)

    def _require_store(self) -> _Store:
        if self._store is None:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the shard has not started yet")
        return self._store

    def _stored_version(self, key: str) -> int:
        store = self._require_store()
        try:
            version = getattr(store, "version", None)
            if version is not None:
                return int(version(key))
            stored = store.load(key)
            return stored.version if stored is not None else 0
        except STORE_UNAVAILABLE as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"session store unreachable: {exc}") from exc

    def _decoded(self, key: str, entry: _Entry) -> Any:
        """The entry's state, decoding an import's bytes at their first use. Bytes that
        do not decode (a sender that is not a shard's export) drop the copy: DATA_LOSS,
        nothing executed; the next call loads the session from the store."""
        state, data = entry.state, entry.data
        if state is not UNDECODED:
            return state
        try:
            state = self.codec.decode(data)
        except Exception as exc:
            with self._cond:
                if self._held.get(key) is entry:
                    del self._held[key]
                self._cond.notify_all()
            raise Refused(
                grpc.StatusCode.DATA_LOSS,
                f"imported state of session {key!r} does not decode: {exc}; the copy was "
                "dropped, the next call loads the session from the store",
            ) from exc
        with self._cond:
            if entry.state is UNDECODED and entry.data is data:
                entry.state = state
        return state

    def _load(self, key: str) -> Any:
        try:
            return self._require_store().load(key)
        except STORE_UNAVAILABLE as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"session store unreachable: {exc}") from exc
        except MalformedRecord as exc:
            raise Refused(grpc.StatusCode.DATA_LOSS, str(exc)) from exc

    def _read_override(self, key: str) -> Override | None:
        if self._overrides is None:
            return None
        try:
            return self._overrides.get(key)
        except EtcdUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"etcd unreachable: {exc}") from exc
        except MalformedRecord:
            # Once per session key (a bounded set), not on every read of the same value.
            level = logging.DEBUG if key in self._malformed_seen else logging.WARNING
            if len(self._malformed_seen) >= _MALFORMED_REMEMBERED:
                self._malformed_seen.clear()
            self._malformed_seen.add(key)
            log.log(
                level,
                "shard %s: the override of session %r in etcd is malformed: it is ignored "
                "(a new session is served here; one whose state names another shard "
                "cannot be taken over until it is fixed); no data is lost; fix or delete "
                "the key (docs/etcd-schema.md)",
                self.shard_id,
                key,
            )
            return None

    def _topology_override(self, key: str) -> Override | None:
        topology = self._topology()
        return None if topology is None else topology.overrides.get(key)

    def _known(self, key: str) -> Override | None:
        return newest_override(self._topology_override(key), self._hints.get(key))

    def _live(self) -> Collection[str]:
        topology = self._topology()
        # Without a topology (standalone shard) every shard a mover named counts as alive.
        return _EVERYONE if topology is None else topology.shards

    def _check_epoch(self, key: str, epoch: int) -> None:
        known = self._known(key)
        floor = self._floors.get(key, 0)
        if epoch_is_stale(epoch, known) or epoch < floor:
            newest = max(floor, known.epoch if known is not None else 0)
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stale epoch {epoch} for session {key!r}: this shard knows epoch {newest}",
            )

    def _floor(self, key: str, epoch: int) -> None:
        # Called with _cond held.
        self._floors[key] = max(epoch, self._floors.get(key, 0))
        self._floors.move_to_end(key)
        while len(self._floors) > _MAX_HINTS:
            self._floors.popitem(last=False)

    def _lease_to_write(self) -> tuple[bool, int | None]:
        """``(False, None)`` while a lease given at attach is not confirmed live: no
        override is written then (one without a lease would outlive the shard); else
        ``(True, lease)``, the lease None for a host attached without one."""
        lease = self._lease()
        return (lease is not None or not self._leased), lease

    def _hint(self, key: str, override: Override) -> None:
        # Called with _cond held.
        self._hints[key] = override
        self._hints.move_to_end(key)
        while len(self._hints) > _MAX_HINTS:
            self._hints.popitem(last=False)

    def _sweep_interval(self) -> float:
        return max(1.0, min(self.idle_ttl_s / 4, 60.0))


class _Everyone(Collection[str]):
    def __contains__(self, item: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_EVERYONE = _Everyone()


def _moving_message(key: str) -> str:
    return f"session {key!r} is moving; nothing was executed; retry"


def _not_ready_message(key: str) -> str:
    return (
        f"session {key!r} is not held here and this shard has no topology or no live "
        "lease yet (etcd unreachable): it takes over nothing; nothing was executed; retry"
    )


def _busy_message(key: str) -> str:
    return f"session {key!r} is busy with another turn; nothing was executed; retry"
