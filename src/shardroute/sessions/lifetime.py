"""How held sessions end on a shard: idle eviction, expiry sweeps, dropping a copy."""

from __future__ import annotations

import grpc

from shardroute.errors import (
    EtcdUnavailable,
    Refused,
    ShardRouteError,
    StaleState,
)
from shardroute.sessions._host_base import FREEZE_LIMIT_S, HostBase, _Entry, log


class Lifetime(HostBase):
    """Eviction and expiry of :class:`~shardroute.sessions.SessionHost`."""

    def evict_idle(self) -> int:
        """Forget held sessions neither busy nor frozen and unused for ``idle_ttl_s``,
        and those frozen for a move longer than ``FREEZE_LIMIT_S`` (their state is in
        the store). Returns how many. Also runs by itself at most every
        ``min(idle_ttl_s / 4, 60)`` s when calls begin."""
        with self._cond:
            return self._evict_idle(self._clock())

    def _evict_idle(self, now: float) -> int:
        # Called with _cond held.
        cutoff = now - self.idle_ttl_s
        thawed = now - FREEZE_LIMIT_S  # frozen before this: the move was abandoned
        idle = [
            key
            for key, e in self._held.items()
            if not (e.busy or e.loading)
            and (e.frozen_at <= thawed if e.frozen else e.last_used <= cutoff)
        ]
        for key in idle:
            del self._held[key]
        self.evictions_total += len(idle)
        return len(idle)

    def _maybe_sweep(self) -> None:
        # Called with _cond held.
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_interval()
            self._evict_idle(now)

    def _drop_if_idle(self, key: str, entry: _Entry | None, lease: int | None) -> _Entry | None:
        """Forget a held copy before serving it when it is idle, unused for
        ``idle_ttl_s`` (which :meth:`attach` keeps below the store's ``ttl_s``: its
        stored state may have expired), or held under another lease than ``lease`` (the
        live one, None when in doubt: the session may have moved meanwhile). Called with
        ``_cond`` held; returns the entry, or None when dropped (then taken over again)."""
        if entry is None or entry.busy or entry.frozen or entry.loading or entry.imported:
            return entry
        if entry.lease == lease and self._clock() - entry.last_used < self.idle_ttl_s:
            return entry
        del self._held[key]
        self.evictions_total += 1
        return None

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
                    "shard %s: the sweep of idle and expired sessions failed (%s), next in "
                    "%.0fs; sessions are served as usual and no data is at risk; check that "
                    "the session store and etcd are reachable",
                    self.shard_id,
                    exc,
                    interval,
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

    def drop(self, session_key: str) -> bool:
        """Forget a held session (not busy); True when it was held."""
        with self._cond:
            entry = self._held.get(session_key)
            if entry is None or entry.busy:
                return False
            del self._held[session_key]
            self._cond.notify_all()
            return True
