"""Move a session between shards without losing a turn (docs/migration.md, "Migration").

:class:`Migrator` is the mover used by :meth:`ShardClient.migrate
<shardroute.client.ShardClient.migrate>`, ``shardroute migrate`` and draining shards.
Each step is fenced by the session override's epoch in etcd; a failure before the
commit rolls back, so the session stays whole on its source.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from shardroute.discovery.source import TopologySource
from shardroute.errors import (
    ConfigError,
    EtcdUnavailable,
    LeaseNotFound,
    MigrationConflict,
    MigrationFailed,
    ShardRouteError,
    StaleState,
    UnknownShard,
)
from shardroute.etcd import EtcdClient
from shardroute.model import Override, Shard, ShardState, Topology
from shardroute.routing import OwnLoads, Router
from shardroute.security import ChannelSecurity, ControlToken
from shardroute.sessions._known import KnownOverrides
from shardroute.sessions._shard_calls import Exported, ShardCalls, control_stub
from shardroute.sessions.chunks import DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES
from shardroute.sessions.etcd_store import EtcdSessionStore
from shardroute.sessions.overrides import OverrideStore, next_override
from shardroute.sessions.store import SessionStore
from shardroute.telemetry import Telemetry, names
from shardroute.telemetry.migration import MigrationTrace, attached, batched, carry
from shardroute.transport.failures import rpc_brief

__all__ = ["MAX_CONCURRENT_MOVES", "MigrationResult", "Migrator", "control_stub"]

log = logging.getLogger("shardroute.migration")

MAX_CONCURRENT_MOVES = 64
"""The most moves one mover runs at once (a drain's ``max_concurrent_moves`` too)."""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What one migration did."""

    session_key: str
    source: str
    target: str
    epoch: int
    """The override epoch of the commit."""
    state_bytes: int
    from_store: bool
    """True when the source was unreachable and the state came from the session store."""
    duration_s: float
    """Fence to commit: the target serves the session from then on. The source's
    release is sent then, not waited for (:meth:`Migrator.wait_released`)."""


class Migrator:
    """Moves sessions of one service between its shards.

    Args:
        etcd: the etcd client (overrides and, by default, the session store).
        service: the service name.
        topology: a started topology source of the service (live shards, addresses,
            leases).
        store: the session store (default: :class:`EtcdSessionStore` on ``etcd``).
        router: picks targets when none is given (default: a fresh :class:`Router`).
        loads: this process's own in-flight counts (a client's ``inflight``), so target
            choice sees the load this process adds; None: reported loads only.
        routing_view: the snapshot to pick targets on (a client passes its own: the
            topology with each shard's freshest load, etcd report or response trailer,
            docs/routing.md); default: ``topology``'s snapshot, with its etcd reports.
        timeout: deadline of each shard call, in seconds.
        chunk_bytes: size of the state chunks streamed between shards.
        close_etcd: close ``etcd`` in :meth:`close` (when the migrator owns it).
        tls: how to reach shards (:class:`~shardroute.security.TLSConfig` or
            ``grpc.ChannelCredentials``; None: plaintext).
        control_token: the token shards' control services ask for
            (:class:`~shardroute.security.ControlToken`; default: from
            ``$SHARDROUTE_CONTROL_TOKEN_FILE`` / ``$SHARDROUTE_CONTROL_TOKEN``, if set).
        telemetry: where each move's span (a child per step) and metrics go
            (docs/observability.md; default: the global OpenTelemetry providers).

    Thread contract: ``migrate`` may be called from several threads at once (for
    different sessions; for the same session, exactly one wins the fence).
    """

    def __init__(
        self,
        etcd: EtcdClient,
        service: str,
        topology: TopologySource,
        *,
        store: SessionStore | None = None,
        router: Router | None = None,
        loads: OwnLoads | None = None,
        timeout: float = 30.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        close_etcd: bool = False,
        tls: ChannelSecurity = None,
        control_token: ControlToken | None = None,
        telemetry: Telemetry | None = None,
        routing_view: Callable[[], Topology] | None = None,
    ) -> None:
        if not timeout > 0 or not math.isfinite(timeout):
            raise ConfigError(f"timeout must be a finite number > 0, got {timeout!r}")
        if chunk_bytes < MIN_CHUNK_BYTES:
            raise ConfigError(f"chunk_bytes must be >= {MIN_CHUNK_BYTES}, got {chunk_bytes!r}")
        self.service = service
        self.topology = topology
        self.overrides = OverrideStore(etcd, service)
        self.store: SessionStore = store if store is not None else EtcdSessionStore(etcd, service)
        self.router = router if router is not None else Router()
        self.loads = loads
        self._routing_view = routing_view
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self._etcd = etcd if close_etcd else None
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self._lock = threading.Lock()
        self._calls = ShardCalls(
            timeout=timeout, chunk_bytes=chunk_bytes, tls=tls, control_token=control_token
        )
        self._known = KnownOverrides()  # its own last commits
        self._active = 0
        self.peak_concurrent = 0
        """Most migrations this mover ran at the same time."""

    @property
    def releases_failed(self) -> int:
        """Releases sent after a commit that the source refused or did not answer
        (logged; the commit stands)."""
        return self._calls.releases_failed

    # -- one session ------------------------------------------------------------------

    def migrate(
        self, session_key: str, *, target: str | None = None, held_by: str | None = None
    ) -> MigrationResult:
        """Move ``session_key`` to ``target`` (or the router's choice); see the module doc.
        ``held_by``: the shard known to hold it (a drain's own), its owner when etcd has no
        override (instead of reading the whole stored state for the owner it recorded).

        Raises:
            MigrationConflict: another move of this session holds the fence.
            MigrationFailed: the move failed before its commit and was rolled back.
            UnknownShard: ``target`` is not an active shard of the topology.
            ConfigError: the session has no owner, or ``target`` is its owner already.
            EtcdUnavailable: etcd cannot be reached (nothing changed).
        """
        with self._lock:
            self._active += 1
            self.peak_concurrent = max(self.peak_concurrent, self._active)
        try:
            return self._migrate(session_key, target, held_by)
        finally:
            with self._lock:
                self._active -= 1

    def _migrate(
        self, session_key: str, target: str | None, held_by: str | None
    ) -> MigrationResult:
        started = time.monotonic()
        self.wait_released(session_key)  # this mover's previous move of it has ended
        topology = self.topology.current()
        self._prune(topology)
        # The override as this mover knows it (its topology follows overrides, or it
        # committed the session's last move itself), else read from etcd. The fence
        # compares its revision: a view that is behind only makes that swap fail; then
        # etcd is read and the move decided again.
        known = self._known.take(session_key, topology)
        current = known if known is not None else self.overrides.get(session_key)
        steps: MigrationTrace | None = None
        while True:
            if current is not None and current.moving_to:
                if steps is not None:
                    steps.finish("conflict")
                raise MigrationConflict(
                    f"session {session_key!r} is already moving to {current.moving_to!r} "
                    f"(epoch {current.epoch})",
                    session_key,
                )
            try:
                source_id = self._owner(session_key, current, held_by)
                target_shard = self._target(session_key, topology, source_id, target)
            except ShardRouteError as exc:
                if known is not None:  # e.g. "already lives on the target": as known
                    current, known = self.overrides.get(session_key), None
                    continue
                if steps is not None:  # decided again: the session changed hands meanwhile
                    steps.finish("conflict", exc)
                raise
            source_shard = topology.shards.get(source_id)
            fence = next_override(current, source_id, moving_to=target_shard.id)
            if steps is None:
                steps = MigrationTrace(self.telemetry, session_key, source_id, target_shard.id)
            else:
                steps.redecided(source_id, target_shard.id)
            try:
                with steps.step("fence"):
                    fenced = self._swap(session_key, current, fence, source_shard or target_shard)
                break
            except StaleState as exc:
                if known is None or isinstance(exc, LeaseNotFound):
                    steps.finish("conflict", exc)
                    raise MigrationConflict(
                        f"session {session_key!r} changed hands while this move started "
                        "(another mover or shard wrote its override first); nothing was "
                        "changed: look at its owner again and move it again if you still "
                        "want to",
                        session_key,
                    ) from exc
            current = self.overrides.get(session_key)  # the followed view was behind
            known = None
        assert fenced is not None
        commit = next_override(fenced, target_shard.id)
        try:
            exported = self._export(session_key, fenced, source_shard, target_shard, steps)
            self._calls.import_warm(session_key, fenced.epoch, target_shard, exported, steps)
            with steps.step("commit"):
                committed = self._commit(session_key, fenced, commit, target_shard)
        except BaseException as exc:
            with steps.step("rollback"):
                self._roll_back(session_key, fenced, source_id, source_shard, target_shard)
            steps.finish("conflict" if isinstance(exc, StaleState) else "rolled_back", exc)
            if isinstance(exc, LeaseNotFound):
                raise MigrationFailed(
                    f"moving session {session_key!r}: the target {target_shard.id!r} lost its "
                    "etcd lease (it is going away); rolled back",
                    session_key,
                ) from exc
            if isinstance(exc, StaleState):
                raise MigrationConflict(
                    f"session {session_key!r}: another mover or shard broke this move's fence "
                    "during the move; it was rolled back and nothing was lost: look at its "
                    "owner again and move it again if you still want to",
                    session_key,
                ) from exc
            if isinstance(exc, ShardRouteError | grpc.RpcError):
                raise MigrationFailed(
                    f"moving session {session_key!r} from {source_id!r} to "
                    f"{target_shard.id!r} failed and was rolled back, nothing lost: "
                    f"{rpc_brief(exc)}",
                    session_key,
                ) from exc
            raise
        assert committed is not None
        if source_shard is not None:
            # The target serves the session from the commit on: the release is sent, not
            # waited for (its failure changes nothing: logged, and the source learns the
            # commit from its override watch). See docs/migration.md.
            with steps.step("release") as span:
                span.set_attribute(names.STEP_AWAITED, False)
                self._calls.release_later(
                    source_shard, session_key, committed.epoch, target_shard.id
                )
        self.router.remember(session_key, target_shard.id)
        self._known.remember(session_key, committed)
        steps.finish("committed")
        return MigrationResult(
            session_key,
            source_id,
            target_shard.id,
            committed.epoch,
            exported.size,
            exported.chunks is None and exported.pushed < 0,
            time.monotonic() - started,
        )

    def migrate_many(
        self,
        session_keys: Iterable[str],
        *,
        max_concurrent: int = 4,
        deadline: float | None = None,
        held_by: str | None = None,
    ) -> tuple[list[MigrationResult], dict[str, ShardRouteError]]:
        """Move several sessions, at most ``max_concurrent`` at once (each to the router's
        choice). No move starts after ``deadline`` (a ``time.monotonic()`` value); the
        sessions left get a ``MigrationFailed`` (they stay whole in the session store).
        Returns the results and the errors by session key. Each move's own log line is
        at DEBUG: the caller logs the batch's summary (a drain does); ``held_by`` as for
        :meth:`migrate`."""
        if not 1 <= max_concurrent <= MAX_CONCURRENT_MOVES:
            raise ConfigError(
                f"max_concurrent must be in 1..{MAX_CONCURRENT_MOVES}, got {max_concurrent!r}"
            )
        results: list[MigrationResult] = []
        errors: dict[str, ShardRouteError] = {}

        parent = carry()  # a drain's span: the parent of these moves, in the pool's threads

        def one(key: str) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                errors[key] = MigrationFailed(
                    f"session {key!r} not moved: the deadline passed first", key, started=False
                )
                return
            try:
                with attached(parent), batched():
                    results.append(self.migrate(key, held_by=held_by))
            except ShardRouteError as exc:
                errors[key] = exc

        with ThreadPoolExecutor(max_concurrent, thread_name_prefix="shardroute-move") as pool:
            list(pool.map(one, session_keys))
        return results, errors

    def wait_released(self, session_key: str | None = None) -> None:
        """Wait for the releases this mover sent after its commits (of ``session_key``
        only, or all) to be answered, each at most the mover's ``timeout``. A failed
        release was logged and counted (:attr:`releases_failed`)."""
        self._calls.wait_released(session_key)

    def close(self) -> None:
        """Wait for the releases still in flight, then close the channels to shards.
        Idempotent."""
        self._calls.close()
        if self._etcd is not None:
            self._etcd.close()

    def __enter__(self) -> Migrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps ------------------------------------------------------------------------

    def _owner(self, session_key: str, current: Override | None, held_by: str | None) -> str:
        owner = current.owner if current is not None else held_by
        if owner is not None:
            return owner
        stored = self.store.load(session_key)
        if stored is None or not stored.owner:
            raise ConfigError(
                f"session {session_key!r} has no owner to move it from: no override and no "
                "stored state (a session exists once it answered a turn)"
            )
        return stored.owner

    def _target(
        self, session_key: str, topology: Topology, source_id: str, target: str | None
    ) -> Shard:
        if target is not None:
            shard = topology.shards.get(target)
            if shard is None or shard.state is not ShardState.ACTIVE:
                raise UnknownShard(target)
            if target == source_id:
                raise ConfigError(f"session {session_key!r} already lives on {target!r}")
            return shard
        view = topology if self._routing_view is None else self._routing_view()
        decision = self.router.route(session_key, view, excluded=(source_id,), loads=self.loads)
        return decision.shard

    def _swap(
        self, session_key: str, expected: Override | None, new: Override, holder: Shard
    ) -> Override | None:
        return self.overrides.swap(session_key, expected, new, lease=holder.lease or None)

    def _export(
        self,
        session_key: str,
        fenced: Override,
        source: Shard | None,
        target: Shard,
        steps: MigrationTrace,
    ) -> Exported:
        """The state: exported by the source (which may push it into ``target`` itself),
        else (source unreachable) from the store."""
        if source is not None:
            exported = self._calls.export(
                session_key, fenced.epoch, source, self.store.max_bytes, steps, target.id
            )
            if exported is not None:
                return exported
        with steps.step("store_load"):
            stored = self.store.load(session_key)
        if stored is None:
            return Exported(b"", 0, None)
        return Exported(stored.data, stored.version, None)

    def _commit(
        self, session_key: str, fenced: Override, commit: Override, target: Shard
    ) -> Override:
        """Swap the fence for the commit. If etcd fails mid-call, read the override back:
        the commit may have been applied before the connection broke."""
        try:
            committed = self._swap(session_key, fenced, commit, target)
        except EtcdUnavailable:
            now = self.overrides.get(session_key)
            if now is not None and (now.owner, now.epoch, now.moving_to) == (
                commit.owner,
                commit.epoch,
                "",
            ):
                return now
            raise
        assert committed is not None
        return committed

    def _roll_back(
        self,
        session_key: str,
        fenced: Override,
        source_id: str,
        source: Shard | None,
        target: Shard,
    ) -> None:
        """Undo a move that did not commit. Every step is tried even if one fails: the
        override back to the source (or deleted when the source is dead, so the next turn
        takes over from the store), the source unfrozen, the target's copy dropped."""
        try:
            if source is not None:
                back: Override | None = next_override(fenced, source.id)
                assert back is not None
                self._swap(session_key, fenced, back, source)
            else:
                back = None
                self.overrides.swap(session_key, fenced, None)
        except ShardRouteError as exc:
            log.error(
                "session %r: a failed move could not be rolled back in etcd (%s): the session "
                "stays fenced until its shard reclaims it after its hold timeout (its calls "
                "wait, then clients retry them); no data is lost; check that etcd is reachable",
                session_key,
                exc,
            )
            back = None
        if source is not None:
            epoch = back.epoch if back is not None else fenced.epoch + 1
            self._calls.release(source, session_key, epoch, "")
        self._calls.release(target, session_key, fenced.epoch + 1, source_id)

    def _prune(self, topology: Topology) -> None:
        """Close channels to shards that left ``topology`` or moved address."""
        self._calls.retain(topology.shards)
