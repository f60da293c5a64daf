"""Keeps a shard registered in etcd: its record and load report under one lease.

One :class:`Registrar` per server, one daemon thread. Both the sync and the asyncio server
use it (etcd I/O is blocking, so the asyncio server runs it in that thread too).

The thread's loop, every tick (0.2 s at most):

1. No lease (never registered, or lost): grant one and write the record and the load
   report under it. On failure, retry with backoff (0.25 s doubling to ttl/3).
2. Keep-alive due (every ttl/4, each call bounded by ``min(etcd timeout, ttl/3)``, so a
   keep-alive that hangs is retried before the lease can expire): refresh
   the lease. A TTL of 0 back means the lease expired while etcd was unreachable (or
   this process was stopped): drop it, so step 1 registers again.
3. Load report: written when :class:`LoadReportPolicy` says so (the etcd write budget).

:meth:`Registrar.live_lease` is the lease only while a grant or keep-alive confirmed it
within ¾ of its TTL: a shard resumed after a SIGSTOP, or cut from etcd that long, does
not trust its lease (nor the sessions it holds under it) until etcd confirms it again.

Every etcd write of one registrar goes through one lock, so the record a drain rewrites
and a re-registration never interleave.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from shardroute.discovery.records import encode_load, encode_shard
from shardroute.errors import EtcdUnavailable
from shardroute.etcd import EtcdClient
from shardroute.model import LoadReport, ShardState
from shardroute.server.config import ServerConfig
from shardroute.server.load import LoadReportPolicy

__all__ = ["Registrar"]

log = logging.getLogger("shardroute.server")

_TICK_S = 0.2


class Registrar:
    """Registration, lease keep-alive and load reporting for one shard.

    Args:
        config: the server's configuration (``etcd`` must be set).
        report: returns the shard's current load (called from the registrar thread).
        etcd: the client to use (a new one from ``config`` when None).

    Thread contract: :meth:`register`, :meth:`set_state` and :meth:`close` may be called
    from any thread; the keep-alive loop runs in its own daemon thread after
    :meth:`start_keepalive`.
    """

    def __init__(
        self,
        config: ServerConfig,
        report: Callable[[], LoadReport],
        *,
        etcd: EtcdClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._report = report
        self._etcd = etcd if etcd is not None else EtcdClient(config.etcd_options(keepalive=True))
        self._clock = clock
        self._policy = LoadReportPolicy(capacity=config.capacity)
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease: int | None = None
        self._address = ""
        self._state = ShardState.ACTIVE
        self._next_refresh = 0.0
        self._confirmed_at = 0.0  # when etcd last confirmed the lease (clock)
        self._trust_s = 0.75 * config.lease_ttl_s
        self.registrations_total = 0
        """How many times the record was written under a new lease."""
        self.load_writes_total = 0
        """How many load reports were written to etcd."""
        self.record_writes_total = 0
        """How many shard records were written to etcd."""

    @property
    def registered(self) -> bool:
        """True while the registrar holds a lease it believes valid."""
        return self._lease is not None

    @property
    def lease_id(self) -> int | None:
        """The current lease id, or None."""
        return self._lease

    def live_lease(self) -> int | None:
        """The lease when etcd confirmed it within ¾ of its TTL, else None (it may have
        expired: after a pause of this process, or while etcd is unreachable)."""
        lease = self._lease
        if lease is None or self._clock() - self._confirmed_at > self._trust_s:
            return None
        return lease

    def register(self, address: str) -> None:
        """Grant a lease and write the record and load report under it.

        Raises :class:`~shardroute.errors.EtcdUnavailable` when etcd cannot be reached.
        """
        self._address = address
        with self._io:
            self._register_locked()

    def _register_locked(self) -> None:
        config = self._config
        schema = config.schema
        lease = self._etcd.grant_lease(config.lease_ttl_s)
        try:
            self._etcd.put(
                schema.shard(config.shard_id), self._record(self._state, lease), lease=lease
            )
            self.record_writes_total += 1
            report = self._report()
            self._etcd.put(schema.load(config.shard_id), encode_load(report), lease=lease)
            self.load_writes_total += 1
        except EtcdUnavailable:
            self._revoke_quietly(lease)
            raise
        now = self._clock()
        self._policy.written(report, now)
        self._lease = lease
        self._confirmed_at = now
        self._next_refresh = now + config.keepalive_interval_s
        self.registrations_total += 1
        log.info(
            "shard %s registered at %s (lease %x, ttl %ss)",
            config.shard_id,
            self._address,
            lease,
            config.lease_ttl_s,
        )

    def _record(self, state: ShardState, lease: int) -> bytes:
        """The shard record, with the lease it is written under (movers attach a
        session override to its owner's lease)."""
        shard = dataclasses.replace(self._config.shard(self._address, state), lease=lease)
        return encode_shard(shard)

    def set_state(self, state: ShardState) -> bool:
        """Rewrite the record with ``state`` (e.g. draining); True when etcd took it.

        When etcd is unreachable the new state is kept and written by the next
        re-registration; the call logs and returns False instead of raising.
        """
        with self._io:
            self._state = state
            if self._lease is None:
                return False
            config = self._config
            try:
                self._etcd.put(
                    config.schema.shard(config.shard_id),
                    self._record(state, self._lease),
                    lease=self._lease,
                )
            except EtcdUnavailable as exc:
                log.warning(
                    "shard %s could not mark itself %s in etcd (%s): clients keep its previous "
                    "state until it is written or its lease expires; no data is at risk; "
                    "check that etcd is reachable",
                    config.shard_id,
                    state,
                    exc,
                )
                return False
            self.record_writes_total += 1
            return True

    def start_keepalive(self) -> None:
        """Start the keep-alive and load-report thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"shardroute-registrar-{self._config.shard_id}", daemon=True
        )
        self._thread.start()

    def close(self, *, deregister: bool = True) -> None:
        """Stop the thread; revoke the lease (removing record and report) when
        ``deregister``; close the etcd client. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._io:
            lease, self._lease = self._lease, None
            if deregister and lease is not None:
                self._revoke_quietly(lease)
        self._etcd.close()

    def _revoke_quietly(self, lease: int) -> None:
        try:
            self._etcd.revoke_lease(lease)
        except EtcdUnavailable as exc:
            log.warning(
                "shard %s could not remove its registration (lease %x) from etcd (%s): "
                "clients stop routing to it when the lease expires; no data is at risk; "
                "nothing to do",
                self._config.shard_id,
                lease,
                exc,
            )

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.25
        wait = 0.0
        # Since when etcd does not answer (one line per outage); not registered yet: the
        # shell's start() has said so already.
        outage: float | None = None if self._lease is not None else time.monotonic()
        while not self._stop.wait(wait):
            try:
                with self._io:
                    if self._stop.is_set():
                        return
                    self._step_locked()
                backoff = 0.25
                wait = _TICK_S
                if outage is not None:
                    log.info(
                        "shard %s reached etcd again after %.1fs",
                        self._config.shard_id,
                        time.monotonic() - outage,
                    )
                    outage = None
            except EtcdUnavailable as exc:
                outage = self._lost_etcd(outage, exc)
                wait = backoff
                backoff = min(backoff * 2, max(0.25, self._config.keepalive_interval_s))
            except Exception:  # never let the keep-alive thread die
                log.exception(
                    "shard %s: unexpected error in its etcd registration loop (retried in "
                    "1 s; it keeps serving); please report it with this traceback",
                    self._config.shard_id,
                )
                wait = 1.0

    def _lost_etcd(self, outage: float | None, exc: EtcdUnavailable) -> float:
        """Log the start of an etcd outage once (WARNING), each retry at DEBUG."""
        if outage is not None:
            log.debug("shard %s: etcd still unreachable: %s", self._config.shard_id, exc)
            return outage
        log.warning(
            "shard %s cannot reach etcd (%s): it keeps serving and retries, but cannot renew "
            "its lease or report its load meanwhile; no data is at risk; check that etcd is "
            "reachable",
            self._config.shard_id,
            exc,
        )
        return time.monotonic()

    def _step_locked(self) -> None:
        if self._lease is None:
            self._register_locked()
            return
        now = self._clock()
        if now >= self._next_refresh:
            ttl = self._etcd.refresh_lease(self._lease)
            if ttl <= 0:
                log.warning(
                    "shard %s lost its etcd lease %x (etcd unreachable, or this process paused "
                    "longer than the lease TTL): clients may have stopped routing to it; it "
                    "registers again now; no data is lost: each session it held is checked "
                    "against etcd before its next turn",
                    self._config.shard_id,
                    self._lease,
                )
                self._lease = None
                self._register_locked()
                return
            self._confirmed_at = now  # sent at `now`: the lease lives at least ttl from it
            self._next_refresh = now + self._config.keepalive_interval_s
        report = self._report()
        if self._policy.should_write(report, now):
            try:
                self._etcd.put(
                    self._config.schema.load(self._config.shard_id),
                    encode_load(report),
                    lease=self._lease,
                )
            except EtcdUnavailable as exc:
                if "lease not found" in str(exc):
                    self._lease = None
                raise
            self.load_writes_total += 1
            self._policy.written(report, now)
