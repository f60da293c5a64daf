"""Rebalance: move sessions toward an even spread over the active shards, within a move
budget (as Google's Slicer bounds key churn per rebalance), preferring sessions that go back
to their ring home, then idle ones, then small ones.

After a shard returns (killed, restarted under the same id) the sessions the survivors took
over stay pinned on them by their overrides, and every new client pays a redirect for each;
after a shard joins, it starts empty. :func:`plan_moves` is the pure plan; :class:`Rebalancer`
lists what each shard holds (``ShardControl.ListSessions``) and carries the plan out with the
:class:`~shardroute.sessions.migrator.Migrator` (fenced moves: no turn is lost).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import grpc

from shardroute._proto import shard_pb2
from shardroute.errors import ConfigError, ShardRouteError
from shardroute.model import Shard, Topology
from shardroute.security.channels import ChannelMaker
from shardroute.security.control_auth import ControlToken
from shardroute.security.tls import ChannelSecurity
from shardroute.sessions.migrator import Migrator, control_stub
from shardroute.telemetry.migration import batched
from shardroute.transport.failures import rpc_brief

__all__ = ["HeldSession", "Move", "RebalanceResult", "Rebalancer", "imbalance", "plan_moves"]

log = logging.getLogger("shardroute.scaling")


@dataclass(frozen=True, slots=True)
class HeldSession:
    """A session a shard holds. ``last_used_ts`` is on that shard's own clock: compared
    only with the same shard's sessions."""

    session_key: str
    shard_id: str
    state_bytes: int = 0
    last_used_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Move:
    """One planned move and why it was chosen."""

    session_key: str
    source: str
    target: str
    reason: str


def imbalance(counts: Mapping[str, int]) -> float:
    """max / average of the counts (1.0 when balanced or empty)."""
    total = sum(counts.values())
    if not counts or total == 0:
        return 1.0
    return max(counts.values()) * len(counts) / total


def plan_moves(
    held: Mapping[str, Sequence[HeldSession]],
    active: Collection[str],
    home: Callable[[str], str | None],
    max_moves: int,
) -> tuple[Move, ...]:
    """Moves, at most ``max_moves``, from the fullest active shard to the emptiest until no
    active shard holds more than ``ceil(average)``. From a full shard, a session whose ring
    home (``home(key)``) is under the average goes first (moving it home also ends its
    redirect), then the longest idle, then the smallest. Sessions on shards that are not
    active are left to their drain. Pure."""
    pools = {sid: sorted(held.get(sid, ()), key=_take_first) for sid in active}
    counts = {sid: len(pool) for sid, pool in pools.items()}
    if len(counts) < 2:
        return ()
    ceiling = math.ceil(sum(counts.values()) / len(counts))
    moves: list[Move] = []
    while len(moves) < max_moves:
        source = max(counts, key=lambda s: (counts[s], s))
        if counts[source] <= ceiling:
            break
        pool = pools[source]
        pick = next(
            (
                i
                for i, s in enumerate(pool)
                if (h := home(s.session_key)) in counts and h != source and counts[h] < ceiling
            ),
            None,
        )
        if pick is not None:
            session = pool.pop(pick)
            target = home(session.session_key) or ""
            reason = "back to its ring home"
        else:
            target = min(counts, key=lambda s: (counts[s], s))
            if counts[target] + 1 >= counts[source]:
                break
            session = pool.pop(0)
            reason = "idle and small, to the emptiest shard"
        counts[source] -= 1
        counts[target] += 1
        moves.append(Move(session.session_key, source, target, reason))
    return tuple(moves)


def _take_first(session: HeldSession) -> tuple[float, int, str]:
    return (session.last_used_ts, session.state_bytes, session.session_key)


@dataclass(frozen=True, slots=True)
class RebalanceResult:
    """What a rebalance did (or, with ``dry_run``, would do)."""

    before: Mapping[str, int]
    planned: tuple[Move, ...]
    moved: int
    failed: Mapping[str, str]
    after: Mapping[str, int]
    dry_run: bool
    duration_s: float

    def to_dict(self) -> dict[str, object]:
        """The JSON shape of ``shardroute rebalance --json``."""
        return {
            "before": dict(self.before),
            "imbalance_before": round(imbalance(self.before), 3),
            "moves": [
                {"session": m.session_key, "from": m.source, "to": m.target, "why": m.reason}
                for m in self.planned
            ],
            "moved": self.moved,
            "failed": dict(self.failed),
            "after": dict(self.after),
            "imbalance_after": round(imbalance(self.after), 3),
            "dry_run": self.dry_run,
            "seconds": round(self.duration_s, 2),
        }


class Rebalancer:
    """Lists the sessions of every active shard and moves some toward balance.

    Args:
        mover: the migrator of the service (its topology source and credentials are used).
        tls: security of the channels to shards (as the mover's).
        control_token: the control service's token (default: from the environment).
        timeout: seconds per ``ListSessions`` page.
    """

    def __init__(
        self,
        mover: Migrator,
        *,
        tls: ChannelSecurity = None,
        control_token: ControlToken | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.mover = mover
        self.timeout = timeout
        self._channels = ChannelMaker(tls)
        token = control_token if control_token is not None else ControlToken.from_env()
        self._credentials = token.metadata() if token is not None else ()

    def held(self, topology: Topology) -> dict[str, list[HeldSession]]:
        """What every active shard holds (one ``ListSessions`` pass each)."""
        return {s.id: self._list(s) for s in topology.shards.values() if s.available}

    def _list(self, shard: Shard) -> list[HeldSession]:
        sessions: list[HeldSession] = []
        token = ""
        with self._channels.sync_channel(shard) as channel:
            stub = control_stub(channel)
            while True:
                request = shard_pb2.ListSessionsRequest(page_size=1000, page_token=token)
                try:
                    page = stub.ListSessions(
                        request, timeout=self.timeout, metadata=self._credentials
                    )
                except grpc.RpcError as exc:
                    log.warning(
                        "cannot list the sessions of %s (%s): this rebalance moves none of "
                        "them; no data is at risk; nothing to do",
                        shard.id,
                        rpc_brief(exc),
                    )
                    return sessions
                sessions += [
                    HeldSession(i.session_key, shard.id, i.state_bytes, i.last_used_ts)
                    for i in page.sessions
                ]
                token = page.next_page_token
                if not token:
                    return sessions

    def run(
        self,
        *,
        max_moves: int = 1000,
        max_moves_per_s: float = 20.0,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> RebalanceResult:
        """Plan and (unless ``dry_run``) carry out the moves, starting at most
        ``max_moves_per_s`` a second. A move that fails leaves its session where it was."""
        if max_moves < 0 or not max_moves_per_s > 0:
            raise ConfigError("max_moves must be >= 0 and max_moves_per_s > 0")
        started = clock()
        topology = self.mover.topology.current()
        held = self.held(topology)
        before = {sid: len(pool) for sid, pool in held.items()}
        router = self.mover.router

        def home(key: str) -> str | None:
            try:
                return router.route(key, topology).home.id
            except ShardRouteError:  # every shard at its ceiling: no home preference
                return None

        planned = plan_moves(held, list(held), home, max_moves)
        after = dict(before)
        failed: dict[str, str] = {}
        moved = 0
        pace = threading.Event()
        for n, move in enumerate([] if dry_run else planned):
            wait = started + n / max_moves_per_s - clock()
            if wait > 0:
                pace.wait(wait)
            try:
                with batched():  # one summary line below, each move's at DEBUG
                    self.mover.migrate(move.session_key, target=move.target)
            except ShardRouteError as exc:
                failed[move.session_key] = str(exc)
                continue
            moved += 1
            after[move.source] -= 1
            after[move.target] += 1
        if planned and not dry_run:
            log.log(
                logging.WARNING if failed else logging.INFO,
                "rebalance: %d of %d planned moves done in %.1fs, %d failed%s",
                moved,
                len(planned),
                clock() - started,
                len(failed),
                "; no data is lost: a session whose move failed stays whole where it was; "
                "nothing to do"
                if failed
                else "",
            )
        if dry_run:
            for move in planned:
                after[move.source] -= 1
                after[move.target] += 1
        return RebalanceResult(before, planned, moved, failed, after, dry_run, clock() - started)
