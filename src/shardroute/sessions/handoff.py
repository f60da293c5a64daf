"""The migration side of a shard's sessions: export (freeze), import, warm, release,
and settling or reclaiming a move that ended without telling this shard."""

from __future__ import annotations

import contextvars
import time
from typing import Any

import grpc

from shardroute.errors import (
    EtcdUnavailable,
    Refused,
    StaleState,
)
from shardroute.model import Override
from shardroute.sessions._host_base import (
    UNDECODED,
    HostBase,
    _Entry,
    _moving_message,
    log,
)
from shardroute.sessions.applied import Applied

import_version: contextvars.ContextVar[int] = contextvars.ContextVar(
    "shardroute_import_version", default=0
)
"""The store version an incoming import's bytes were saved at (0: unknown), set by the
server around the ``import_session`` hook so its signature stays as it is."""

import_stored_version: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "shardroute_import_stored_version", default=None
)
"""The session's store version as read beside the import's fence check
(:meth:`Handoff.check_import`), set by the server around the ``import_session`` hook;
None: :meth:`Handoff.import_state` reads it itself."""

rpc_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shardroute_rpc_deadline", default=None
)
"""The ``time.monotonic()`` deadline of the RPC a blocking host method serves (set by the
server around the migration hooks; None: no deadline). :meth:`SessionHost.export` bounds
its wait for the in-flight turn by it."""

_DEADLINE_MARGIN_S = 0.05
"""An export gives up this long before the RPC's deadline, so its answer still arrives."""


class Handoff(HostBase):
    """Export, import, warm and release of :class:`~shardroute.sessions.SessionHost`."""

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
        live, lease = self._lease_to_write()
        if not live:
            raise Refused(
                grpc.StatusCode.ABORTED,
                f"session {key!r} is moving and this shard's lease is not confirmed live "
                "to reclaim it; nothing was executed; retry",
            )
        try:
            written = self._overrides.swap(
                key, current, Override(self.shard_id, current.epoch + 1), lease=lease
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
            "shard %s took session %r back: its move to %s (fence epoch %d) was abandoned "
            "(the mover went away); the session is served here again, whole; nothing to do",
            self.shard_id,
            key,
            held_on.moving_to,
            held_on.epoch,
        )
        return written

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
                entry.frozen_at = self._clock()
                return entry.data
        stored = self._load(session_key)
        if stored is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no state for session {session_key!r}")
        data: bytes = stored.data
        return data

    def import_state(self, session_key: str, epoch: int, data: bytes) -> int:
        """Hold an imported state (not yet owned: served once the override names this
        shard). Returns its size. The bytes are decoded at their first use (a turn, the
        warm hook), not here: a move does not wait for the codec, and bytes that do not
        decode are refused then (``DATA_LOSS``, the copy dropped).

        Raises :class:`Refused`: ``FAILED_PRECONDITION`` when the epoch is older than the
        override this shard knows, when this shard serves the session itself (owns it, or
        a turn, an export or a load is in progress), or when the bytes are not the store's
        current state (a turn was answered after the export: the mover rolls back).
        """
        claimed = import_version.get()
        applied: Applied | None = None  # unknown: read from the store before the next turn
        if claimed > 0:
            # The sender says which stored version the bytes are: comparing versions is
            # a keys-only read, instead of reading the whole state back (done already
            # when the server read it beside the fence check: check_import).
            version = import_stored_version.get()
            if version is None:
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
            applied = self.turn_memory.keep(stored.applied) if stored is not None else ()
        with self._cond:
            self._check_epoch(session_key, epoch)
            current = self._held.get(session_key)
            if current is not None and not self._replaceable(session_key, current):
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"session {session_key!r} is served by this shard; import refused",
                )
            self._held[session_key] = _Entry(
                UNDECODED, data, version, imported=True, last_used=self._clock(), applied=applied
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
        """Pre-warm an imported or held session (calls ``on_warm`` with its decoded
        state); False when the session is not held here."""
        with self._cond:
            self._check_epoch(session_key, epoch)
            entry = self._held.get(session_key)
            if entry is None or entry.loading:
                return False
        if self._on_warm is not None:
            self._on_warm(session_key, self._decoded(session_key, entry))
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

    def verify_move(
        self, session_key: str, epoch: int, step: str, new_owner: str = ""
    ) -> Override | None:
        """Refuse a migration call that no move in etcd stands behind (the control
        service calls it before each step; docs/security.md). The session's override is
        read from etcd and must be, for ``step``:

        - ``export``: the live fence of a move off this shard at ``epoch``
          (``{owner: this shard, epoch, moving_to: someone}``);
        - ``import`` and ``warm``: the live fence of a move to this shard at ``epoch``;
        - ``release``: the committed override at ``epoch`` naming ``new_owner`` (this
          shard when empty: a rollback), with no move in progress.

        So an epoch made up by a caller is refused (FAILED_PRECONDITION), and a session
        is frozen, imported or released only as part of a move a mover fenced. A shard
        without etcd (standalone) has nothing to check against and accepts the call.

        The read races this shard's override watch: when the watch shows exactly such
        an override (from etcd: it carries its revision) before the read answers, that
        stands behind the call (the watch is etcd's own record of its writes, at most a
        moment behind the read; the mover wrote the fence before calling). Otherwise the
        read decides, as before. Returns the override that stands behind the call (None
        on a standalone shard).
        """
        if self._overrides is None:
            return None
        owner = new_owner or self.shard_id
        watched, current = self._read_or_watch(session_key, epoch, step, owner)
        if watched is not None:
            return watched
        if _backs(current, epoch, step, self.shard_id, owner):
            return current
        shown = (
            "no override"
            if current is None
            else f"owner {current.owner!r} epoch {current.epoch}"
            + (f" moving to {current.moving_to!r}" if current.moving_to else "")
        )
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{step} of session {session_key!r} at epoch {epoch} refused: etcd shows {shown}, "
            "not a move that this call belongs to; nothing changed",
        )

    def _watched_backs(self, key: str, epoch: int, step: str, owner: str) -> Override | None:
        followed = self._topology_override(key)
        if followed is None or followed.version <= 0:
            return None
        return followed if _backs(followed, epoch, step, self.shard_id, owner) else None

    def _read_or_watch(
        self, key: str, epoch: int, step: str, owner: str
    ) -> tuple[Override | None, Override | None]:
        """``(the watched override, None)`` as soon as the watch backs the call, else
        ``(None, the override read from etcd)`` (see :meth:`verify_move`; a read still
        running when the watch backs the call is not waited for)."""
        watched = self._watched_backs(key, epoch, step, owner)
        if watched is not None:
            return watched, None
        side = self._side_executor()
        try:
            if side is None:
                raise RuntimeError("closed")
            read = side.submit(self._read_override, key)
        except RuntimeError:  # the shard is stopping: just read
            return None, self._read_override(key)

        def answered(_done: object) -> None:
            with self._cond:
                self._cond.notify_all()

        read.add_done_callback(answered)
        with self._cond:  # woken by the read's answer and by topology changes
            while not read.done():
                watched = self._watched_backs(key, epoch, step, owner)
                if watched is not None:
                    return watched, None
                self._cond.wait()
        return None, read.result()

    def watched_move(self, session_key: str, epoch: int) -> str | None:
        """Where the fence at ``epoch`` moves the session to, as this shard's override
        watch shows it; None when the watch shows no such fence (yet)."""
        followed = self._topology_override(session_key)
        if followed is None or followed.epoch != epoch or not followed.moving_to:
            return None
        return followed.moving_to

    def check_import(self, session_key: str, epoch: int, claimed: int) -> int | None:
        """The import's checks that read: :meth:`verify_move` (``import``) and, when the
        sender named the store version its bytes were saved at (``claimed`` > 0), the
        store's version of the session, read at the same time, so the two round trips
        cost one. Returns that version for :meth:`import_state`
        (:data:`import_stored_version`), or None when not read. Nothing changes here:
        a refused fence is raised first, whatever the version read found; an
        unreachable store is ``UNAVAILABLE``."""
        side = self._side_executor() if claimed > 0 and self._store is not None else None
        if side is None:
            self.verify_move(session_key, epoch, "import")
            return None
        try:
            read = side.submit(self._stored_version, session_key)
        except RuntimeError:  # shut down meanwhile (the shard is stopping): in turn
            self.verify_move(session_key, epoch, "import")
            return None
        self.verify_move(session_key, epoch, "import")
        return read.result()

    def exported_version(self, session_key: str) -> int:
        """The store version of the copy this shard holds (0 when it holds none): what
        an export of it was saved at."""
        with self._cond:
            entry = self._held.get(session_key)
            return entry.version if entry is not None and not entry.loading else 0


def _backs(current: Override | None, epoch: int, step: str, me: str, owner: str) -> bool:
    """Whether the override ``current`` stands behind ``step`` at ``epoch`` on shard ``me``
    (see :meth:`Handoff.verify_move`)."""
    if current is None or current.epoch != epoch:
        return False
    if step == "export":
        return current.owner == me and bool(current.moving_to)
    if step in ("import", "warm"):
        return current.moving_to == me
    if step == "release":
        return current.owner == owner and not current.moving_to
    raise ValueError(f"unknown migration step {step!r}")


def _deadline(timeout: float | None) -> float | None:
    """A monotonic deadline: ``timeout`` from now, else the RPC's, a little early."""
    if timeout is not None:
        return time.monotonic() + timeout
    deadline = rpc_deadline.get()
    return None if deadline is None else deadline - _DEADLINE_MARGIN_S
