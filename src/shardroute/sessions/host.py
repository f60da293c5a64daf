"""The sessions a shard holds: state in memory, write-through checkpoints, ownership.

:class:`SessionHost` is the ready helper every :class:`~shardroute.server.ShardServer`
owns as ``shard.sessions``. It keeps each held session's state (decoded, and as the
bytes last saved), the session store version last read or written, a busy flag (the
per-session lock: one turn of a session at a time) and a frozen flag (an export is in
progress). It applies the ownership rules (:mod:`shardroute.sessions.ownership`) to every
call and carries the decision out: serve, take over from the store, redirect, or hold.
Its parts: the shared state (:mod:`._host_base`), checkpoint writes and the record of
applied turns (:mod:`._checkpoints`), the migration side (:mod:`.handoff`), eviction and
expiry (:mod:`.lifetime`); turns here.

Every method blocks (a held call waits on the condition), so the asyncio server calls
them through ``asyncio.to_thread`` or the host's own executor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from shardroute.errors import (
    EtcdNoSpace,
    MalformedRecord,
    Refused,
    StaleState,
    StateTooLarge,
)
from shardroute.model import Override, Topology
from shardroute.sessions._checkpoints import Checkpoints
from shardroute.sessions._host_base import (
    UNDECODED,
    SessionSummary,
    _busy_message,
    _Entry,
    _moving_message,
    _not_ready_message,
    _Overrides,
    _Store,
    log,
)
from shardroute.sessions._save_retry import retry_deadline, save_retrying
from shardroute.sessions.applied import AppliedTurn
from shardroute.sessions.handoff import Handoff
from shardroute.sessions.lifetime import Lifetime
from shardroute.sessions.ownership import PLACED_REASONS, UNBOUNDED_REASONS, Action, decide
from shardroute.sessions.store import STORE_UNAVAILABLE
from shardroute.sessions.turns import AsyncTurn, Turn
from shardroute.telemetry.server import checkpointed

__all__ = ["SessionHost"]


class SessionHost(Checkpoints, Handoff, Lifetime):
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
        checkpoint_retry_s: how long a checkpoint is retried while the store is
            unreachable (within the call's deadline; 0: not retried).

    The store, the override store, the topology and the lease come from the server at
    ``start()`` (:meth:`attach`). Thread contract: every method may be called from any
    thread; methods that wait (turns, exports) block the calling thread.
    """

    def attach(
        self,
        store: _Store,
        *,
        overrides: _Overrides | None = None,
        topology: Callable[[], Topology | None] | None = None,
        lease: Callable[[], int | None] | None = None,
        ready: Callable[[], bool] | None = None,
        admit: Callable[[str, Topology], str | None] | None = None,
    ) -> None:
        """Give the host its session store, override store, topology view and lease
        (None from ``lease``: not confirmed live now, no override is written; no
        ``lease``: overrides without one); ``ready`` says whether it may take sessions
        over (False: refused, UNAVAILABLE); ``admit`` where a new session goes instead."""
        self._store = store
        self._admit = admit
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
            self._leased = True
        if ready is not None:
            self._ready = ready
        if isinstance(ttl, int | float) and ttl > 0 and self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep_loop,
                args=(max(0.5, min(ttl / 2, 60.0)),),
                name=f"shardroute-{self.shard_id}-sweep",
                daemon=True,
            )
            self._sweeper.start()

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
        """The held state of a session, or None (no ownership check; decodes an import)."""
        entry = self._held.get(session_key)
        return None if entry is None or entry.loading else self._decoded(session_key, entry)

    def is_frozen(self, session_key: str) -> bool:
        """Whether an export froze the session here."""
        entry = self._held.get(session_key)
        return entry is not None and entry.frozen

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

        After a checkpoint found the store unreachable, a held session is served only
        once the store answers again (one version read per call until then; else
        ``UNAVAILABLE`` before anything ran), so an outage refuses turns instead of
        running them for nothing.
        """
        entry = self._begin(session_key, reason, load)
        try:
            if not entry.loading and (self.store_suspect or entry.applied is None):
                if entry.applied is None:  # imported by version: read its applied turns
                    self._read_applied(session_key, entry)
                else:
                    self._stored_version(session_key)  # raises Refused (UNAVAILABLE)
                self.store_suspect = False
            if load and entry.state is UNDECODED:
                self._decoded(session_key, entry)  # an import's first turn
        except BaseException:
            self.end(session_key, entry)
            raise
        return entry

    def _begin(self, session_key: str, reason: str | None, load: bool) -> Any:
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
                lease = self._lease()
                entry = self._drop_if_idle(session_key, entry, lease)
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
                    entry.lease = lease
                    return entry
                if action is Action.TAKE_OVER and not self._ready():
                    raise Refused(grpc.StatusCode.UNAVAILABLE, _not_ready_message(session_key))
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
                        placed = reason in PLACED_REASONS  # on purpose: see _claim_placed
                        placeholder = _Entry(
                            None, b"", 0, busy=True, loading=True, lease=lease, placed=placed
                        )
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
                self._take_over(session_key, placeholder, fresh, reason)
        except BaseException:
            with self._cond:
                if self._held.get(session_key) is placeholder:
                    del self._held[session_key]
                self._cond.notify_all()
            raise
        return placeholder

    def _take_over(
        self, key: str, entry: _Entry, current: Override | None, reason: str | None
    ) -> None:
        store = self._require_store()
        try:
            stored = store.load(key)
        except STORE_UNAVAILABLE as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"session store unreachable: {exc}") from exc
        except MalformedRecord as exc:
            raise Refused(grpc.StatusCode.DATA_LOSS, str(exc)) from exc
        self.store_suspect = False  # it answered
        if stored is None and current is None and reason not in UNBOUNDED_REASONS:
            self._place_elsewhere(key)  # shard_bound: a redirect when over the bound
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
            entry.applied = self.turn_memory.keep(stored.applied) if stored is not None else ()
            entry.loading = False
            # New sessions, and ones this shard saved whose override never landed (put
            # off, etcd unreachable, the copy dropped meanwhile): placed here again.
            entry.placed = entry.placed and (
                stored is None or (stored.owner == self.shard_id and current is None)
            )
            entry.last_used = self._clock()
            self.takeovers_total += 1
        log.log(  # a new session (nothing stored) is no news: one line each would flood
            logging.INFO if stored is not None else logging.DEBUG,
            "shard %s took over session %s (stored version %d)",
            self.shard_id,
            key,
            entry.version,
        )

    def checkpoint(
        self,
        session_key: str,
        entry: Any,
        new_state: Any,
        turn: AppliedTurn | None = None,
        deadline: float | None = None,
    ) -> None:
        """Save a turn's new state (compare-and-swap on the version), then keep it.

        The store writes what the turn changed (a turn record) when it can, else the
        whole state (:meth:`SessionStore.checkpoint <shardroute.sessions.SessionStore>`).
        ``turn`` (the call's turn id and reply) is added to the session's record of
        applied turns, saved in the same write (stores with ``records_turns``).

        An unreachable store is retried for ``checkpoint_retry_s``, until a little
        before ``deadline`` (the RPC's ``time.monotonic()`` deadline; None: none), a
        write that may have landed read back first (:mod:`._save_retry`).

        Raises :class:`Refused`: ``ABORTED`` when another shard wrote the session
        meanwhile, or it ended or expired (the local copy is dropped; ``ALREADY_EXISTS``
        with the record's reply when that writer applied this same turn id),
        ``RESOURCE_EXHAUSTED`` when the state is over the store's limit, ``UNAVAILABLE``
        when the store stayed unreachable.
        """
        assert isinstance(entry, _Entry)
        data = self.codec.encode(new_state)
        store = self._require_store()
        started = time.perf_counter()
        previous, extra = self._write_from(entry, store, turn)
        until = retry_deadline(time.monotonic(), self.checkpoint_retry_s, deadline)
        try:
            version, log, applied = save_retrying(
                lambda: self._write(store, session_key, entry, data, previous, extra),
                lambda: self._landed(session_key, entry, data, turn),
                until,
            )
        except StaleState as exc:
            raise self._conflict(session_key, entry, turn) from exc
        except StateTooLarge as exc:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        except STORE_UNAVAILABLE as exc:
            # Out of space, the store still answers reads: held sessions stay readable.
            self.store_suspect = not isinstance(exc, EtcdNoSpace)
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"session store unreachable; turn not saved: {exc}"
            ) from exc
        if entry.placed:  # a new session placed here on purpose: its override, once
            entry.placed = not self._claim_placed(session_key, deadline)
        with self._cond:
            entry.state, entry.data, entry.version, entry.log = new_state, data, version, log
            entry.applied = applied
            self.checkpoints_total += 1
            written = getattr(store, "bytes_written", None)
            wrote = len(data)
            if isinstance(written, int):
                wrote = written - self.store_bytes_written
                self.store_bytes_written = written
        checkpointed(self.telemetry, self.shard_id, time.perf_counter() - started, wrote)

    def end(self, session_key: str, entry: Any) -> None:
        """Unlock the session after a turn (any outcome). A session that was never saved
        (a read of an unknown session, a first turn that failed) is not kept."""
        with self._cond:
            entry.busy = False
            entry.last_used = self._clock()
            unsaved = entry.version == 0 and not entry.imported
            if (unsaved or entry.elsewhere) and self._held.get(session_key) is entry:
                del self._held[session_key]
            self._cond.notify_all()

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
            except STORE_UNAVAILABLE as exc:
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
