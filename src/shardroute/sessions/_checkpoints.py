"""Checkpoint writes and the record of applied turns, for
:class:`~shardroute.sessions.SessionHost` (its :meth:`checkpoint
<shardroute.sessions.SessionHost.checkpoint>` is in :mod:`.host`): what a write names,
reading back a write whose outcome is unknown, a lost compare-and-swap, answering a
retried turn from the record, and the overrides a take-over or a first save writes."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import grpc

from shardroute.errors import (
    EtcdUnavailable,
    LeaseNotFound,
    MalformedRecord,
    Refused,
    StaleState,
)
from shardroute.model import Override
from shardroute.sessions._host_base import HostBase, _Entry, _not_ready_message, _Overrides, log
from shardroute.sessions.applied import Applied, AppliedTurn, find, replay_trailers
from shardroute.sessions.envelope import UNKNOWN_LOG, LogPosition, StoredState

__all__ = ["Checkpoints"]


class Checkpoints(HostBase):
    """The checkpoint side of :class:`~shardroute.sessions.SessionHost`."""

    def _swap_to_self(self, key: str, current: Override | None) -> None:
        """Swap the session's override from ``current`` to this shard (a take-over)."""
        overrides = self._overrides
        if overrides is None:
            return
        live, lease = self._lease_to_write()
        if not live:  # lapsed since the decision
            raise Refused(grpc.StatusCode.UNAVAILABLE, _not_ready_message(key))
        new = Override(self.shard_id, (current.epoch if current else 0) + 1)
        try:
            written = overrides.swap(key, current, new, lease=lease)
        except StaleState as exc:
            if current is None and _malformed(overrides, key):  # a key no swap can match
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"session {key!r}: its override in etcd is malformed, so this shard "
                    "cannot take it over from the shard its state names; nothing was "
                    "executed and its state is whole in the store; fix or delete the key "
                    "(docs/etcd-schema.md)",
                ) from exc
            raise Refused(
                grpc.StatusCode.ABORTED,
                f"session {key!r} changed owner while this shard took it over; retry",
            ) from exc
        except EtcdUnavailable as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"etcd unreachable: {exc}") from exc
        if written is not None:
            with self._cond:
                self._hint(key, written)

    def _place_elsewhere(self, key: str) -> None:
        """A new session (nothing stored, no override) at a shard over its balance bound
        (``routing.shard_bound``; :class:`.admission.Admission` decides): redirect the
        call to the shard chosen instead. Nothing has run and nothing is written here: the
        shard named takes the session over without checking again (the call comes with
        the reason ``redirect``) and writes its override at the first save, as for a
        spill (:meth:`_claim_placed`), so a call that never arrives there or saves
        nothing leaves no key in etcd. No-op without ``shard_bound``."""
        topology = self._topology()
        if self._admit is None or topology is None:
            return
        target = self._admit(key, topology)
        if target is None:
            return
        with self._cond:
            self.redirects_total += 1
            self.placed_elsewhere_total += 1
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"session {key!r} is new and this shard is over its balance bound: placed on "
            f"shard {target!r}",
            redirect=target,
        )

    def _claim_placed(self, key: str, deadline: float | None = None) -> bool:
        """Write an override naming this shard for a new session whose first state was
        just saved here, when the client placed it here on purpose (``x-shardroute-reason``
        spill, zone fallback or failover: its home was full or unavailable; or
        ``redirect``: a shard over its bound sent it here).

        Without it nothing says where the session lives until another shard takes it
        over: a home with room again would take it back from the store at the next call
        routed there (a move), and clients that follow overrides could not find it
        (docs/routing.md, "Following overrides"). With it every shard redirects the
        session here. On this shard's lease (gone with the shard), deleted when the
        session ends or expires. Best effort: the turn is saved either way. When the
        call's ``deadline`` (monotonic) leaves less than one etcd call's timeout, it is
        put off (returns False: the next save tries again), so a slow etcd never holds
        the reply far past it; so is it while this shard's lease is not confirmed live
        (an override written with no lease would outlive the shard). An override another
        shard wrote meanwhile stands (it took the session over); with etcd unreachable,
        or this shard's lease gone, the session has none, as a session at its home has
        none. Returns True when done with.
        """
        overrides = self._overrides
        if overrides is None:
            return True
        if deadline is not None and deadline - time.monotonic() < overrides.timeout:
            log.debug(
                "shard %s: override of placed session %s put off (deadline)", self.shard_id, key
            )
            return False
        live, lease = self._lease_to_write()
        if not live:
            log.debug(
                "shard %s: override of placed session %s put off (lease not live)",
                self.shard_id,
                key,
            )
            return False
        try:
            written = overrides.swap(key, None, Override(self.shard_id, 1), lease=lease)
        except LeaseNotFound as exc:
            why: Exception = exc
        except StaleState:
            return True  # another shard took the session over meanwhile: its override stands
        except EtcdUnavailable as exc:
            why = exc
        else:
            if written is not None:
                with self._cond:
                    self._hint(key, written)
            return True
        log.warning(
            "shard %s: no override written for new session %s placed here off its home "
            "(%s); the turn is saved, no data is at risk; the session may move to its "
            "home at a later call",
            self.shard_id,
            key,
            why,
        )
        return True

    def _read_applied(self, key: str, entry: _Entry) -> None:
        """Read the record of applied turns of a session imported by version (the
        transfer carries the state's bytes only; Refused ``UNAVAILABLE`` when the store
        cannot answer). Another stored version: this copy is stale, its checkpoint will
        lose its swap, so it runs with an empty record."""
        stored = self._load(key)
        same = stored is not None and stored.version == entry.version
        entry.applied = self.turn_memory.keep(stored.applied) if same else ()

    def _conflict(self, key: str, entry: _Entry, turn: AppliedTurn | None) -> Refused:
        """Forget ``entry`` after its checkpoint lost the compare-and-swap (another shard
        wrote the session meanwhile) and say so. When that writer applied this very
        turn id (the call was sent again while its first attempt, on a stopped or cut
        off shard, had not finished saving, and then did), the turn happened exactly
        once: this run is discarded and the call answered from the record, as a later
        retry would be."""
        found = None
        if turn is not None and self.turn_memory.max_turns:
            with contextlib.suppress(Refused):  # the store cannot tell now: plain conflict
                found = find(getattr(self._load(key), "applied", None), turn.turn_id)
        with self._cond:
            if self._held.get(key) is entry:
                del self._held[key]
            self.conflicts_total += 1
            self.replayed_total += found is not None
        if found is None:
            return Refused(
                grpc.StatusCode.ABORTED,
                f"session {key!r} was written by another shard during this turn; "
                "the turn was not saved (retry: the next call follows the new owner)",
            )
        return Refused(
            grpc.StatusCode.ALREADY_EXISTS,
            f"turn {found.turn_id} of session {key!r} was applied already by "
            "another shard, exactly once (this call was a retry of it); this run was not "
            "saved, the call is answered from the record of applied turns",
            extra_trailers=replay_trailers(found),
        )

    def replay(self, entry: Any, turn_id: str) -> AppliedTurn | None:
        """The turn ``turn_id`` if the session (``entry``, from ``begin``) applied it
        recently, counted in :attr:`replayed_total`: it must not run again, it is
        answered from the record. None: run it."""
        found = find(entry.applied, turn_id) if self.turn_memory.max_turns else None
        if found is not None:
            with self._cond:
                self.replayed_total += 1
        return found

    def _write_from(
        self, entry: _Entry, store: Any, turn: AppliedTurn | None
    ) -> tuple[StoredState | None, dict[str, Applied]]:
        """What a checkpoint of ``entry`` names: the stored state it grew from (None: a
        new session) and the store's extra arguments (for stores with ``records_turns``:
        ``applied``, the record with ``turn`` added)."""
        previous = None
        if entry.version:
            log = entry.log or UNKNOWN_LOG
            previous = StoredState(
                entry.data, entry.version, self.shard_id, log, entry.applied or ()
            )
        if not getattr(store, "records_turns", False):
            return previous, {}
        applied = entry.applied or ()
        if turn is not None and self.turn_memory.max_turns:
            applied = self.turn_memory.remember(applied, turn)
        return previous, {"applied": applied}

    def _write(
        self,
        store: Any,
        key: str,
        entry: _Entry,
        data: bytes,
        previous: StoredState | None,
        extra: dict[str, Applied],
    ) -> tuple[int, LogPosition | None, Applied | None]:
        """One attempt of a checkpoint: the new version, log position and record of
        applied turns (the arguments as :meth:`_write_from` made them)."""
        incremental = getattr(store, "checkpoint", None)
        if incremental is not None:
            saved = incremental(key, data, owner=self.shard_id, previous=previous, **extra)
            return saved.version, saved.log, extra.get("applied", entry.applied)
        # A store without turn records: the whole state every turn.
        version = store.save(key, data, owner=self.shard_id, expected_version=entry.version)
        return version, None, entry.applied

    def _landed(
        self, key: str, entry: _Entry, data: bytes, turn: AppliedTurn | None
    ) -> tuple[int, LogPosition | None, Applied | None] | None:
        """After a checkpoint attempt with an unknown outcome, the stored state read
        back: the checkpoint's result when that attempt was applied (this shard's write,
        ``data``, ``turn`` recorded), None when nothing was written (still at the
        entry's version). Raises :class:`StaleState` when another writer got there
        first, a store error when the store cannot answer."""
        with self._cond:
            self.checkpoint_retries_total += 1
        try:
            stored = self._require_store().load(key)
        except MalformedRecord as exc:
            raise Refused(grpc.StatusCode.DATA_LOSS, str(exc)) from exc
        version = stored.version if stored is not None else 0
        if version == entry.version:
            return None
        records = bool(getattr(self._store, "records_turns", False))
        if stored is not None and stored.owner == self.shard_id and stored.data == data:
            recorded = records and self.turn_memory.max_turns > 0
            if turn is None or not recorded or find(stored.applied, turn.turn_id) is not None:
                log.info("shard %s: a checkpoint of %s was applied already", self.shard_id, key)
                return stored.version, stored.log, stored.applied if records else entry.applied
        raise StaleState(f"session {key!r} changed while a checkpoint's outcome was unknown", key)


def _malformed(overrides: _Overrides, key: str) -> bool:
    """Whether the session's override in etcd is there but unreadable (``get`` raises
    :class:`MalformedRecord`): a compare-and-swap expecting none cannot replace it."""
    try:
        overrides.get(key)
    except MalformedRecord:
        return True
    except EtcdUnavailable:
        pass  # unknown: the caller says "changed owner; retry"
    return False
