"""The sessions a shard holds: state in memory, write-through checkpoints, ownership.

:class:`SessionHost` is the ready helper every :class:`~shardroute.server.ShardServer`
owns as ``shard.sessions``. It keeps each held session's state (decoded, and as the
bytes last saved), the session store version last read or written, a busy flag (the
per-session lock: one turn of a session at a time) and a frozen flag (an export is in
progress). It applies the ownership rules (:mod:`shardroute.server._ownership`) to every
call and carries the decision out: serve, take over from the store, redirect, or hold.

Mutable state (``_held``, ``_hints``) changes only under ``_cond``, in short steps that do
no I/O; store and etcd I/O happen between those steps, on an entry marked busy so no
other call of the same session touches it meanwhile. Every method blocks (a held call
waits on the condition), so the asyncio server calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import grpc

from shardroute import metadata
from shardroute.errors import (
    EtcdUnavailable,
    MalformedRecord,
    Refused,
    ShardRouteError,
    StaleState,
    StateTooLarge,
)
from shardroute.model import Override, Topology
from shardroute.server._core import SessionSummary
from shardroute.server._ownership import Action, decide, epoch_is_stale, newest_override
from shardroute.sessions.envelope import UNKNOWN_LOG, LogPosition, StoredState

__all__ = [
    "AsyncTurn",
    "JsonCodec",
    "Refused",
    "SessionCodec",
    "SessionHost",
    "Turn",
]

log = logging.getLogger("shardroute.server")

S = TypeVar("S")

_MAX_HINTS = 65536

import_version: contextvars.ContextVar[int] = contextvars.ContextVar(
    "shardroute_import_version", default=0
)
"""The store version an incoming import's bytes were saved at (0: unknown), set by the
server around the ``import_session`` hook so its signature stays as it is."""

rpc_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shardroute_rpc_deadline", default=None
)
"""The ``time.monotonic()`` deadline of the RPC a blocking host method serves (set by the
server around the migration hooks; None: no deadline). :meth:`SessionHost.export` bounds
its wait for the in-flight turn by it."""

_DEADLINE_MARGIN_S = 0.05
"""An export gives up this long before the RPC's deadline, so its answer still arrives."""


class SessionCodec(Protocol[S]):
    """Turns a session's state object into bytes and back (store and migration)."""

    def encode(self, state: S) -> bytes:
        """The state as bytes."""
        ...

    def decode(self, data: bytes) -> S:
        """The state from bytes made by :meth:`encode`."""
        ...

    def empty(self) -> S:
        """The state of a new session."""
        ...


class JsonCodec:
    """State as compact JSON (UTF-8). ``empty`` makes a new session's state
    (default: ``{}``); the state must be JSON-serialisable (dicts, lists, strings, ...)."""

    def __init__(self, empty: Callable[[], Any] = dict) -> None:
        self._empty = empty

    def encode(self, state: Any) -> bytes:
        """Compact JSON, keys sorted."""
        return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()

    def decode(self, data: bytes) -> Any:
        """Parse the JSON; empty bytes give a new session's state."""
        return json.loads(data) if data else self._empty()

    def empty(self) -> Any:
        """A new session's state."""
        return self._empty()


class _Store(Protocol):
    max_bytes: int

    def load(self, session_key: str) -> Any: ...

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int: ...

    def delete(self, session_key: str, *, expected_version: int | None = None) -> Any: ...


class _Overrides(Protocol):
    def get(self, session_key: str) -> Override | None: ...

    def swap(
        self,
        session_key: str,
        expected: Override | None,
        new: Override | None,
        *,
        lease: int | None = None,
    ) -> Override | None: ...


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
    releases: int = 0
    """How many ReleaseSession calls reached this entry (an export waiting for the
    in-flight turn refuses to freeze if one arrived meanwhile)."""


class SessionHost:
    """The sessions one shard holds, with ownership decisions and write-through
    checkpoints (docs/server.md, "Sessions").

    Use it from a handler::

        with shard.sessions.turn(context) as session:
            history = session.state              # treat it as read-only
            ... produce all but the last reply message ...
            yield session.checkpoint(history + [turn], reply=last_message)

    Args:
        shard_id: this shard's id (the owner written with the state).
        codec: state object ↔ bytes (default :class:`JsonCodec`).
        hold_timeout_s: how long a call of a moving session waits for the move to
            commit or roll back, and a call of a busy session for its turn, before it
            fails with ABORTED (nothing executed; retry).
        max_state_bytes: the largest state an import accepts.
        on_warm: called with ``(session_key, state)`` by :meth:`warm`.
        idle_ttl_s: a held session neither busy nor frozen and unused this long is
            evicted (its state is in the store; the next call takes it over again).
        wait_workers: threads of the executor the asyncio server runs the blocking
            :meth:`begin` on (a waiting call holds one; checkpoints use another pool).
        clock: the wall clock (``time.time``) for last use and eviction; tests inject one.

    The store, the override store, the topology and the lease come from the server at
    ``start()`` (:meth:`attach`). Thread contract: every method may be called from any
    thread; methods that wait (turns, exports) block the calling thread.
    """

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
    ) -> None:
        self.shard_id = shard_id
        self.codec: SessionCodec[Any] = codec if codec is not None else JsonCodec()
        self.hold_timeout_s = hold_timeout_s
        self.max_state_bytes = max_state_bytes
        self.idle_ttl_s = idle_ttl_s
        self._on_warm = on_warm
        self._clock = clock
        self._wait_workers = wait_workers
        self._executor: ThreadPoolExecutor | None = None
        self._next_sweep = clock() + self._sweep_interval()
        self._store: _Store | None = None
        self._overrides: _Overrides | None = None
        self._topology: Callable[[], Topology | None] = lambda: None
        self._lease: Callable[[], int | None] = lambda: None
        # Mutable state, changed only under _cond: the held sessions, and what movers
        # told this shard about overrides (ahead of the topology watch), bounded LRU.
        self._cond = threading.Condition()
        self._held: dict[str, _Entry] = {}
        self._hints: OrderedDict[str, Override] = OrderedDict()
        # Epochs a rollback told this shard (ReleaseSession to itself): they fence stale
        # migration calls but say nothing new about ownership, so they are no hints.
        self._floors: OrderedDict[str, int] = OrderedDict()
        self.takeovers_total = 0
        """Sessions this shard took over from the store."""
        self.redirects_total = 0
        """Calls answered with a redirect."""
        self.conflicts_total = 0
        """Checkpoints that lost their compare-and-swap (turn aborted, copy dropped)."""
        self.evictions_total = 0
        """Idle sessions evicted (``idle_ttl_s``)."""
        self.reclaims_total = 0
        """Abandoned fences this shard reclaimed after a hold timed out."""
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.checkpoints_total = 0
        """Turns saved to the session store."""
        self.store_bytes_written = 0
        """Bytes the session store wrote (its ``bytes_written``, as of the last checkpoint)."""
        self.ended_total = 0
        """Sessions ended by :meth:`end_session`."""

    # -- wiring (by the server) -----------------------------------------------------

    def attach(
        self,
        store: _Store,
        *,
        overrides: _Overrides | None = None,
        topology: Callable[[], Topology | None] | None = None,
        lease: Callable[[], int | None] | None = None,
    ) -> None:
        """Give the host its session store, override store, topology view and lease."""
        self._store = store
        ttl = getattr(store, "ttl_s", None)
        if isinstance(ttl, int | float) and ttl > 0:
            # Evict a held copy before the store can expire its state: a copy served after
            # that would fail its checkpoint.
            self.idle_ttl_s = min(self.idle_ttl_s, 0.9 * ttl)
        self._overrides = overrides
        if topology is not None:
            self._topology = topology
        if lease is not None:
            self._lease = lease
        if isinstance(ttl, int | float) and ttl > 0 and self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep_loop,
                args=(max(0.5, min(ttl / 2, 60.0)),),
                name=f"shardroute-{self.shard_id}-sweep",
                daemon=True,
            )
            self._sweeper.start()

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

    def close(self) -> None:
        """Shut the wait executor and the sweeper down (the server calls it once stopped)."""
        self._closed.set()
        with self._cond:
            executor, self._executor = self._executor, None
            self._cond.notify_all()
        if executor is not None:
            executor.shutdown(wait=False)

    def topology_changed(self, _topology: object = None) -> None:
        """Wake held calls so they decide again (the topology source's subscriber)."""
        with self._cond:
            self._cond.notify_all()

    # -- views ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, session_key: object) -> bool:
        entry = self._held.get(session_key) if isinstance(session_key, str) else None
        return entry is not None and not entry.loading

    def keys(self) -> list[str]:
        """The keys of the sessions held now."""
        with self._cond:
            return [k for k, e in self._held.items() if not e.loading]

    def summaries(self) -> list[SessionSummary]:
        """Every held session with its state size and last use."""
        with self._cond:
            return [
                SessionSummary(k, len(e.data), e.last_used)
                for k, e in self._held.items()
                if not e.loading
            ]

    def epoch(self, session_key: str) -> int:
        """The session's override epoch as this shard knows it (0: none)."""
        known = self._known(session_key)
        return known.epoch if known else 0

    def peek(self, session_key: str) -> Any:
        """The held state of a session, or None (no ownership check, no lock)."""
        entry = self._held.get(session_key)
        return None if entry is None or entry.loading else entry.state

    def is_frozen(self, session_key: str) -> bool:
        """Whether an export froze the session here."""
        entry = self._held.get(session_key)
        return entry is not None and entry.frozen

    # -- turns ----------------------------------------------------------------------

    def turn(self, context: Any, session_key: str | None = None) -> Turn:
        """A turn of the call's session, as a context manager (sync handlers).

        Entering decides ownership and takes the session's lock: the call is redirected
        (``FAILED_PRECONDITION`` + ``x-shardroute-redirect``), held, taken over or
        served. ``session_key`` defaults to the call's ``x-shardroute-session``.
        """
        return Turn(self, context, session_key)

    def aturn(self, context: Any, session_key: str | None = None) -> AsyncTurn:
        """The asyncio twin of :meth:`turn` (``async with``)."""
        return AsyncTurn(self, context, session_key)

    def begin(self, session_key: str, reason: str | None = None, *, load: bool = True) -> Any:
        """Decide ownership for one call and lock the session; returns its entry.

        Raises :class:`Refused` (redirect; ``ABORTED`` when the session stays busy or
        moving for ``hold_timeout_s``; store failure). Pair with :meth:`end`. Prefer
        :meth:`turn`, which does both. ``load=False`` locks a session this shard does
        not hold without reading its state (:meth:`end_session`).
        """
        deadline = time.monotonic() + self.hold_timeout_s
        fresh: Override | None = None
        use_fresh = False  # decide with the direct etcd read alone (until the next wait)
        read_directly = False
        held_on: Override | None = None  # the override this call first held on
        holding = reclaim_tried = False
        while True:
            with self._cond:
                self._maybe_sweep()
                entry = self._held.get(session_key)
                if entry is not None and entry.busy:
                    # The session's lock: one turn at a time, waited for at most the hold
                    # timeout (an unbounded wait would pile calls up behind a long turn).
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise Refused(grpc.StatusCode.ABORTED, _busy_message(session_key))
                    self._cond.wait(remaining)
                    use_fresh = False
                    continue
                override = fresh if use_fresh else self._known(session_key)
                entry = self._settle_frozen(session_key, entry, override)
                entry = self._drop_if_idle(session_key, entry)
                owns = override is not None and override.owner == self.shard_id
                held = entry is not None and (not entry.imported or owns)
                decision = decide(
                    shard_id=self.shard_id,
                    override=override,
                    live=self._live(),
                    held=held,
                    frozen=entry is not None and entry.frozen,
                    reason=reason,
                )
                action = decision.action
                if action is Action.SERVE and entry is not None:
                    entry.busy = True
                    entry.imported = False
                    return entry
                if action is Action.HOLD:
                    if not holding:
                        holding, held_on = True, override
                    remaining = deadline - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)
                        use_fresh = False
                        continue
                    if reclaim_tried or not self._may_reclaim(held_on):
                        raise Refused(grpc.StatusCode.ABORTED, _moving_message(session_key))
                    reclaim_tried = True
                else:
                    need_read = not read_directly and self._overrides is not None
                    if action is Action.REDIRECT and not (need_read and entry is not None):
                        if entry is not None and not entry.frozen:
                            del self._held[session_key]  # a stale copy: the owner is elsewhere
                        self.redirects_total += 1
                        raise Refused(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"session {session_key!r} is owned by shard {decision.owner!r}",
                            redirect=decision.owner,
                        )
                    if action is Action.TAKE_OVER and not need_read:
                        placeholder = _Entry(None, b"", 0, busy=True, loading=True)
                        self._held[session_key] = placeholder
                        break
            if action is Action.HOLD:
                # The hold timed out on a fence that never moved: the mover may be dead.
                assert held_on is not None
                fresh = self._reclaim(session_key, held_on)
            else:
                # In doubt (a take-over, or a redirect away from a session held here):
                # read the override once from etcd, then decide again with that read alone
                # (hints and the watch are older than it).
                fresh = self._read_override(session_key)
                with self._cond:
                    self._hints.pop(session_key, None)
            read_directly = use_fresh = True
        try:
            if load:
                self._take_over(session_key, placeholder, fresh)
        except BaseException:
            with self._cond:
                if self._held.get(session_key) is placeholder:
                    del self._held[session_key]
                self._cond.notify_all()
            raise
        return placeholder

    def _drop_if_idle(self, key: str, entry: _Entry | None) -> _Entry | None:
        """Forget an idle held copy before serving it: unused for ``idle_ttl_s`` (which
        :meth:`attach` keeps below the store's ``ttl_s``), its stored state may have
        expired. Called with ``_cond`` held; returns the entry, or None when dropped."""
        if entry is None or entry.busy or entry.frozen or entry.loading or entry.imported:
            return entry
        if self._clock() - entry.last_used < self.idle_ttl_s:
            return entry
        del self._held[key]
        self.evictions_total += 1
        return None

    def _settle_frozen(self, key: str, entry: _Entry | None, known: Override | None) -> Any:
        """A frozen entry whose move ended without a ReleaseSession reaching this shard:
        the override went past the freezing epoch without ``moving_to``. A rollback (the
        override names this shard) unfreezes it; a commit elsewhere drops the copy.
        Called with ``_cond`` held; returns the entry, or None when dropped."""
        if entry is None or not entry.frozen or known is None:
            return entry
        if known.moving_to or known.epoch <= entry.frozen_epoch:
            return entry
        if known.owner == self.shard_id:
            entry.frozen = False
            return entry
        del self._held[key]
        self._cond.notify_all()
        return None

    def _may_reclaim(self, held_on: Override | None) -> bool:
        return (
            self._overrides is not None
            and held_on is not None
            and held_on.owner == self.shard_id
            and bool(held_on.moving_to)
        )

    def _reclaim(self, key: str, held_on: Override) -> Override | None:
        """After a hold timed out: if etcd still shows the same fence (this shard, same
        epoch, same ``moving_to``), the mover is presumed dead; swap the override back to
        ``{owner: self, epoch: e+1}`` on this shard's lease and unfreeze. The swap
        compares the fence's revision, so a mover that is merely slow loses its commit
        and rolls back. Returns the override as now known (read or written)."""
        current = self._read_override(key)
        if current is None or (current.owner, current.epoch, current.moving_to) != (
            held_on.owner,
            held_on.epoch,
            held_on.moving_to,
        ):
            return current
        assert self._overrides is not None
        try:
            written = self._overrides.swap(
                key, current, Override(self.shard_id, current.epoch + 1), lease=self._lease()
            )
        except StaleState:
            return self._read_override(key)
        except EtcdUnavailable as exc:
            raise Refused(
                grpc.StatusCode.ABORTED,
                f"{_moving_message(key)} (etcd unreachable to reclaim it: {exc})",
            ) from exc
        with self._cond:
            if written is not None:
                self._hint(key, written)  # ahead of the watch: fences the mover's late calls
            entry = self._held.get(key)
            if entry is not None and entry.frozen:
                entry.frozen = False
            self.reclaims_total += 1
            self._cond.notify_all()
        log.warning(
            "shard %s reclaimed session %s: the move to %s fenced at epoch %d was abandoned",
            self.shard_id,
            key,
            held_on.moving_to,
            held_on.epoch,
        )
        return written

    def _take_over(self, key: str, entry: _Entry, current: Override | None) -> None:
        store = self._require_store()
        try:
            stored = store.load(key)
        except EtcdUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"session store unreachable: {exc}") from exc
        except MalformedRecord as exc:
            raise Refused(grpc.StatusCode.DATA_LOSS, str(exc)) from exc
        data = stored.data if stored is not None else b""
        try:
            state = self.codec.decode(data) if stored is not None else self.codec.empty()
        except Exception as exc:
            raise Refused(
                grpc.StatusCode.DATA_LOSS, f"stored state of session {key!r} does not decode: {exc}"
            ) from exc
        if (stored is not None and stored.owner != self.shard_id) or (
            current is not None and current.owner != self.shard_id
        ):
            self._swap_to_self(key, current)
        with self._cond:
            entry.state, entry.data = state, data
            entry.version = stored.version if stored is not None else 0
            entry.log = stored.log if stored is not None else None
            entry.loading = False
            entry.last_used = self._clock()
            self.takeovers_total += 1
        log.info(
            "shard %s took over session %s (stored version %d)", self.shard_id, key, entry.version
        )

    def _swap_to_self(self, key: str, current: Override | None) -> None:
        overrides = self._overrides
        if overrides is None:
            return
        lease = self._lease()
        new = Override(self.shard_id, (current.epoch if current else 0) + 1)
        try:
            written = overrides.swap(key, current, new, lease=lease)
        except StaleState as exc:
            raise Refused(
                grpc.StatusCode.ABORTED,
                f"session {key!r} changed owner while this shard took it over; retry",
            ) from exc
        except EtcdUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"etcd unreachable: {exc}") from exc
        if written is not None:
            with self._cond:
                self._hint(key, written)

    def checkpoint(self, session_key: str, entry: Any, new_state: Any) -> None:
        """Save a turn's new state (compare-and-swap on the version), then keep it.

        The store writes what the turn changed (a turn record) when it can, else the
        whole state (:meth:`SessionStore.checkpoint <shardroute.sessions.SessionStore>`).

        Raises :class:`Refused`: ``ABORTED`` when another shard wrote the session
        meanwhile, or it ended or expired (the local copy is dropped),
        ``RESOURCE_EXHAUSTED`` when the state is over the store's limit, ``UNAVAILABLE``
        when the store is unreachable.
        """
        assert isinstance(entry, _Entry)
        data = self.codec.encode(new_state)
        store = self._require_store()
        log: LogPosition | None = None
        try:
            incremental = getattr(store, "checkpoint", None)
            if incremental is not None:
                previous = (
                    StoredState(entry.data, entry.version, self.shard_id, entry.log or UNKNOWN_LOG)
                    if entry.version
                    else None
                )
                saved = incremental(session_key, data, owner=self.shard_id, previous=previous)
                version, log = saved.version, saved.log
            else:  # a store without turn records: the whole state every turn
                version = store.save(
                    session_key, data, owner=self.shard_id, expected_version=entry.version
                )
        except StaleState as exc:
            with self._cond:
                if self._held.get(session_key) is entry:
                    del self._held[session_key]
                self.conflicts_total += 1
            raise Refused(
                grpc.StatusCode.ABORTED,
                f"session {session_key!r} was written by another shard during this turn; "
                "the turn was not saved (retry: the next call follows the new owner)",
            ) from exc
        except StateTooLarge as exc:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        except EtcdUnavailable as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"session store unreachable; turn not saved: {exc}"
            ) from exc
        with self._cond:
            entry.state, entry.data, entry.version, entry.log = new_state, data, version, log
            self.checkpoints_total += 1
            written = getattr(store, "bytes_written", None)
            if isinstance(written, int):
                self.store_bytes_written = written

    def end(self, session_key: str, entry: Any) -> None:
        """Unlock the session after a turn (any outcome). A session that was never saved
        (a read of an unknown session, a first turn that failed) is not kept."""
        with self._cond:
            entry.busy = False
            entry.last_used = self._clock()
            if entry.version == 0 and not entry.imported and self._held.get(session_key) is entry:
                del self._held[session_key]
            self._cond.notify_all()

    # -- migration ------------------------------------------------------------------

    def export(self, session_key: str, epoch: int, timeout: float | None = None) -> bytes:
        """The session's state for ``ExportSession``: waits for its in-flight turn, then
        freezes it (new turns are held until :meth:`release`). A session not held here is
        loaded from the store.

        The wait is bounded by ``timeout`` (seconds), else by the RPC's deadline
        (:data:`rpc_deadline`, set by the server); after it the epoch is checked again
        and the session is frozen only if no newer override or ReleaseSession arrived
        meanwhile (the mover may have given up and rolled back).

        Raises :class:`Refused`: stale epoch (``FAILED_PRECONDITION``, also when the
        epoch became stale during the wait), the turn outlived the deadline or the
        session was released or replaced during the wait (``ABORTED``, not frozen),
        unknown session (``NOT_FOUND``).
        """
        deadline = _deadline(timeout)
        with self._cond:
            self._check_epoch(session_key, epoch)
            entry = self._held.get(session_key)
            releases = entry.releases if entry is not None else 0
            while entry is not None and entry.busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Refused(
                        grpc.StatusCode.ABORTED,
                        f"session {session_key!r}: the turn in flight did not end before the "
                        "export's deadline; not frozen",
                    )
                self._cond.wait(remaining)
                current = self._held.get(session_key)
                if current is not entry or entry.releases != releases:
                    raise Refused(
                        grpc.StatusCode.ABORTED,
                        f"session {session_key!r} was released or replaced while the export "
                        "waited for its turn; not frozen",
                    )
            self._check_epoch(session_key, epoch)  # a rollback or commit meanwhile
            if entry is not None and not entry.loading:
                entry.frozen = True
                entry.frozen_epoch = epoch
                return entry.data
        stored = self._load(session_key)
        if stored is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no state for session {session_key!r}")
        data: bytes = stored.data
        return data

    def import_state(self, session_key: str, epoch: int, data: bytes) -> int:
        """Hold an imported state (not yet owned: served once the override names this
        shard). Returns its size.

        Raises :class:`Refused`: ``INVALID_ARGUMENT`` when it does not decode;
        ``FAILED_PRECONDITION`` when the epoch is older than the override this shard
        knows, when this shard serves the session itself (owns it, or a turn, an export
        or a load is in progress), or when the bytes are not the store's current state
        (a turn was answered after the export: the mover rolls back).
        """
        try:
            state = self.codec.decode(data)
        except Exception as exc:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"imported state does not decode: {exc}"
            ) from exc
        claimed = import_version.get()
        if claimed > 0:
            # The sender says which stored version the bytes are: comparing versions is
            # a keys-only read, instead of reading the whole state back.
            version = self._stored_version(session_key)
            if version not in (0, claimed):  # 0: nothing stored to contradict it
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"imported state of session {session_key!r} is version {claimed}, the "
                    f"store has version {version}: a turn was saved after the export",
                )
        else:
            stored = self._load(session_key)
            if stored is not None and stored.data != data:
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"imported state of session {session_key!r} is not the stored state "
                    f"(version {stored.version}): a turn was saved after the export",
                )
            version = stored.version if stored is not None else 0
        with self._cond:
            self._check_epoch(session_key, epoch)
            current = self._held.get(session_key)
            if current is not None and not self._replaceable(session_key, current):
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"session {session_key!r} is served by this shard; import refused",
                )
            self._held[session_key] = _Entry(
                state, data, version, imported=True, last_used=self._clock()
            )
            self._cond.notify_all()
        return len(data)

    def _replaceable(self, key: str, entry: _Entry) -> bool:
        """Whether an import may replace ``entry``: idle, and not this shard's to serve
        (an imported copy not yet committed, or a stale copy the override gives to
        another shard). Called with ``_cond`` held."""
        if entry.busy or entry.loading or entry.frozen:
            return False
        known = self._known(key)
        if known is None:
            return entry.imported
        return known.owner != self.shard_id

    def warm(self, session_key: str, epoch: int) -> bool:
        """Pre-warm an imported or held session (calls ``on_warm``); False when the
        session is not held here."""
        with self._cond:
            self._check_epoch(session_key, epoch)
            entry = self._held.get(session_key)
            if entry is None or entry.loading:
                return False
            state = entry.state
        if self._on_warm is not None:
            self._on_warm(session_key, state)
        return True

    def release(self, session_key: str, epoch: int, new_owner: str) -> bool:
        """End a move on this shard. ``new_owner`` set (and not this shard): drop the
        session; held and later calls are redirected there. Empty (rollback) or this
        shard: unfreeze and serve. Returns whether the shard held the session."""
        with self._cond:
            entry = self._held.get(session_key)
            if entry is not None:
                entry.releases += 1
            owner = new_owner or self.shard_id
            if owner == self.shard_id:
                self._check_epoch(session_key, epoch)
                if entry is not None:
                    entry.frozen = False
                    if new_owner:
                        entry.imported = False
                # Not an ownership hint (the override may already have moved on after a
                # rollback); the epoch only fences stale migration calls.
                self._floor(session_key, epoch)
            else:
                if entry is not None and not entry.busy:
                    del self._held[session_key]
                self._hint(session_key, Override(owner, epoch))
            self._cond.notify_all()
            return entry is not None

    def evict_idle(self) -> int:
        """Forget held sessions neither busy nor frozen and unused for ``idle_ttl_s``
        (their state is in the store). Returns how many. Also runs by itself at most every
        ``min(idle_ttl_s / 4, 60)`` s when calls begin."""
        with self._cond:
            return self._evict_idle(self._clock())

    def end_session(self, session_key: str, reason: str | None = None) -> bool:
        """End a session: delete its stored state (snapshot and log) and its override,
        and forget it here. Returns whether it had stored state.

        Ownership is decided as for a turn, so a session that lives on another shard is
        redirected there (:class:`Refused` with ``redirect``) and one in flight or moving
        is waited for (``ABORTED`` after ``hold_timeout_s``: nothing was deleted).
        Idempotent: ending an unknown or already ended session returns False. A later
        turn with the same key starts a new session.

        Raises :class:`Refused`: redirect, ``ABORTED``, ``UNAVAILABLE`` (the store or
        etcd unreachable: the session may be partly ended; retry).
        """
        entry = self.begin(session_key, reason, load=False)
        try:
            store = self._require_store()
            try:
                existed = bool(store.delete(session_key))
            except EtcdUnavailable as exc:
                raise Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    f"session store unreachable; session {session_key!r} not ended: {exc}",
                ) from exc
            self._delete_override(session_key)
        finally:
            with self._cond:
                if self._held.get(session_key) is entry:
                    del self._held[session_key]
                self._hints.pop(session_key, None)
                self.ended_total += 1
                self._cond.notify_all()
        log.debug("shard %s ended session %s (state: %s)", self.shard_id, session_key, existed)
        return existed

    def _delete_override(self, key: str) -> None:
        """Delete the session's override, by compare-and-swap on what etcd holds (a
        concurrent change wins; the override then says where the session went)."""
        if self._overrides is None:
            return
        current = self._read_override(key)
        if current is None:
            return
        try:
            self._overrides.swap(key, current, None)
        except StaleState:
            log.info("shard %s: override of ended session %s changed meanwhile", self.shard_id, key)
        except EtcdUnavailable as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"etcd unreachable; the override of session {key!r} was not deleted: {exc}",
            ) from exc

    def _sweep_loop(self, interval: float) -> None:
        """With a store ``ttl_s``: every ``interval`` s, evict idle copies, let an
        in-memory store expire its sessions, and delete this shard's overrides of
        sessions whose state expired (:meth:`sweep_expired`)."""
        while not self._closed.wait(interval):
            try:
                self.evict_idle()
                expire = getattr(self._store, "expire", None)
                if expire is not None:
                    expire()
                self.sweep_expired()
            except ShardRouteError as exc:
                log.warning(
                    "shard %s: session sweep failed (next in %.0fs): %s",
                    self.shard_id,
                    interval,
                    exc,
                )

    def sweep_expired(self, limit: int = 1000) -> int:
        """Delete overrides that name this shard for sessions it does not hold and whose
        stored state is gone (expired after the store's ``ttl_s``), at most ``limit``
        per sweep; each deletion is a compare-and-swap on the override as read. Returns
        how many were deleted. Runs by itself when the store has a ``ttl_s``."""
        topology = self._topology()
        store = self._store
        if topology is None or self._overrides is None or store is None:
            return 0
        with self._cond:
            candidates = [
                key
                for key, override in topology.overrides.items()
                if override.owner == self.shard_id
                and not override.moving_to
                and key not in self._held
            ][:limit]
        removed = 0
        for key in candidates:
            if self._stored_version(key) != 0:
                continue
            current = self._read_override(key)
            with self._cond:
                if key in self._held:
                    continue
            if current is None or current.owner != self.shard_id or current.moving_to:
                continue
            try:
                self._overrides.swap(key, current, None)
            except StaleState:
                continue
            removed += 1
        if removed:
            log.info("shard %s removed %d overrides of expired sessions", self.shard_id, removed)
        return removed

    def drop(self, session_key: str) -> bool:
        """Forget a held session (not busy); True when it was held."""
        with self._cond:
            entry = self._held.get(session_key)
            if entry is None or entry.busy:
                return False
            del self._held[session_key]
            self._cond.notify_all()
            return True

    # -- internals ------------------------------------------------------------------

    def _require_store(self) -> _Store:
        if self._store is None:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "the shard has not started yet")
        return self._store

    def exported_version(self, session_key: str) -> int:
        """The store version of the copy this shard holds (0 when it holds none): what
        an export of it was saved at."""
        with self._cond:
            entry = self._held.get(session_key)
            return entry.version if entry is not None and not entry.loading else 0

    def _stored_version(self, key: str) -> int:
        store = self._require_store()
        try:
            version = getattr(store, "version", None)
            if version is not None:
                return int(version(key))
            stored = store.load(key)
            return stored.version if stored is not None else 0
        except EtcdUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"session store unreachable: {exc}") from exc

    def _load(self, key: str) -> Any:
        try:
            return self._require_store().load(key)
        except EtcdUnavailable as exc:
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
            log.warning("shard %s: malformed override of session %s", self.shard_id, key)
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

    def _sweep_interval(self) -> float:
        return max(1.0, min(self.idle_ttl_s / 4, 60.0))

    def _maybe_sweep(self) -> None:
        # Called with _cond held.
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval()
            self._evict_idle(now)

    def _evict_idle(self, now: float) -> int:
        # Called with _cond held.
        cutoff = now - self.idle_ttl_s
        idle = [
            key
            for key, e in self._held.items()
            if not (e.busy or e.frozen or e.loading) and e.last_used <= cutoff
        ]
        for key in idle:
            del self._held[key]
        self.evictions_total += len(idle)
        return len(idle)

    def _hint(self, key: str, override: Override) -> None:
        # Called with _cond held.
        self._hints[key] = override
        self._hints.move_to_end(key)
        while len(self._hints) > _MAX_HINTS:
            self._hints.popitem(last=False)


def _deadline(timeout: float | None) -> float | None:
    """A monotonic deadline: ``timeout`` from now, else the RPC's, a little early."""
    if timeout is not None:
        return time.monotonic() + timeout
    deadline = rpc_deadline.get()
    return None if deadline is None else deadline - _DEADLINE_MARGIN_S


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


def _busy_message(key: str) -> str:
    return f"session {key!r} is busy with another turn; nothing was executed; retry"


def _reason(context: Any) -> str | None:
    return metadata.get(context.invocation_metadata(), metadata.REASON)


def _key(context: Any, session_key: str | None) -> str:
    return session_key or metadata.get(context.invocation_metadata(), metadata.SESSION_KEY) or ""


_NO_KEY = "no session key: pass session_key=, or call through a shardroute client"


def _end_if_begun(host: SessionHost, key: str, begun: asyncio.Future[Any]) -> None:
    """Unlock a session a cancelled call's :meth:`SessionHost.begin` locked after all."""
    if not begun.cancelled() and begun.exception() is None:
        host.end(key, begun.result())


class _TurnBase(Generic[S]):
    def __init__(self, host: SessionHost, context: Any, session_key: str | None) -> None:
        self._host = host
        self._context = context
        self.key = _key(context, session_key)
        self._entry: _Entry | None = None
        self.checkpointed = False

    @property
    def state(self) -> S:
        """The session's state at the start of this turn (treat it as read-only: a new
        state is saved with ``checkpoint``)."""
        if self._entry is None:
            raise RuntimeError("a turn's state is only available inside its 'with' block")
        state: S = self._entry.state
        return state

    @property
    def version(self) -> int:
        """The store version of :attr:`state` (0: never saved)."""
        return 0 if self._entry is None else self._entry.version


class Turn(_TurnBase[Any]):
    """One call's hold on a session (sync). See :meth:`SessionHost.turn`."""

    def __enter__(self) -> Turn:
        if not self.key:
            self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, _NO_KEY)
        try:
            self._entry = self._host.begin(self.key, _reason(self._context))
        except Refused as refused:
            self._abort(refused)
        return self

    def checkpoint(self, new_state: Any, reply: Any = None) -> Any:
        """Save ``new_state`` to the session store before the last reply message is sent;
        returns ``reply`` so the last message goes out only after the save::

            yield session.checkpoint(new_state, reply=last_message)

        On a lost compare-and-swap the call ends with ``ABORTED`` (the local copy is
        dropped); over the store's limit with ``RESOURCE_EXHAUSTED``.
        """
        if self._entry is None:
            raise RuntimeError("checkpoint() outside the turn's 'with' block")
        try:
            self._host.checkpoint(self.key, self._entry, new_state)
        except Refused as refused:
            self._abort(refused)
        self.checkpointed = True
        return reply

    def _abort(self, refused: Refused) -> None:
        if refused.trailers:
            self._context.set_trailing_metadata(refused.trailers)
        self._context.abort(refused.code, refused.details)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._host.end(self.key, entry)


class AsyncTurn(_TurnBase[Any]):
    """One call's hold on a session (asyncio). See :meth:`SessionHost.aturn`; the
    blocking steps run in a worker thread."""

    async def __aenter__(self) -> AsyncTurn:
        if not self.key:
            await self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, _NO_KEY)
        host, key = self._host, self.key
        # On the host's own executor: a call waiting here must not take a thread the
        # in-flight turn's checkpoint (default executor) needs.
        begun = asyncio.get_running_loop().run_in_executor(
            host.executor, host.begin, key, _reason(self._context)
        )
        try:
            self._entry = await asyncio.shield(begun)
        except asyncio.CancelledError:
            # The call went away while waiting; the thread may still lock the session.
            begun.add_done_callback(lambda done: _end_if_begun(host, key, done))
            raise
        except Refused as refused:
            await self._abort(refused)
        return self

    async def checkpoint(self, new_state: Any, reply: Any = None) -> Any:
        """Save ``new_state`` before the last reply message; returns ``reply``
        (see :meth:`Turn.checkpoint`)."""
        if self._entry is None:
            raise RuntimeError("checkpoint() outside the turn's 'async with' block")
        try:
            await asyncio.to_thread(self._host.checkpoint, self.key, self._entry, new_state)
        except Refused as refused:
            await self._abort(refused)
        self.checkpointed = True
        return reply

    async def _abort(self, refused: Refused) -> None:
        await self._context.abort(refused.code, refused.details, trailing_metadata=refused.trailers)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._host.end(self.key, entry)
