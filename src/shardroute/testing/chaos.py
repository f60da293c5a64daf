"""Chaos for tests and the demo: faults as small objects, and a runner that applies them
one after the other under live conversations and says what each cost.

A fault has a ``name``, ``apply(env, target)`` and ``heal(env, target)``; faults that
hit one shard (``on_shard = True``) get the shard the runner picked (the home of the
first conversation), the others get ``""``::

    env = ChaosEnv(cluster, etcd_server, client)
    results = ChaosRunner(env, sessions=6).run([Kill(), Stop(3.0), EtcdRestart(2.0)])

Faults of an etcd cluster (:class:`EtcdLeaderLoss`, :class:`EtcdMemberLoss`) need
``ChaosEnv(etcd_cluster=...)``; network faults between the client and a shard
(:class:`Partition`, :class:`SlowShard`) need the shard behind a proxy
(:func:`add_proxied_shards`, listed in ``ChaosEnv.proxies``).
    for result in results:
        print(result.name, result.avoided_after_s, result.failed_turns_by_cause)

What each :class:`FaultResult` measures: the time until the client stopped sending to
the faulty shard (ejected it, or it left the client's topology: ``avoided_after_s``),
the time after the heal until every conversation completed a turn again
(``converged_s``), the turns that failed while the fault lasted, by cause (the
exception's class and gRPC code), and turn latency p99 during the fault against steady state.
:meth:`ChaosRunner.lost_turns` then compares every conversation's history with the
turns that were acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from shardroute.client import ShardClient
from shardroute.errors import ShardRouteError
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.testing.chaos_faults import (
    EtcdLeaderLoss,
    EtcdMemberLoss,
    Partition,
    SlowShard,
    add_proxied_shards,
)
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.etcd_cluster import EtcdCluster
from shardroute.testing.faults import TcpProxy
from shardroute.testing.waiting import wait_until

__all__ = [
    "ChaosEnv",
    "ChaosRunner",
    "Compaction",
    "EtcdLeaderLoss",
    "EtcdMemberLoss",
    "EtcdRestart",
    "Fault",
    "FaultResult",
    "Kill",
    "Partition",
    "SlowShard",
    "Stop",
    "ZoneOutage",
    "add_proxied_shards",
]


@dataclass
class ChaosEnv:
    """What faults act on: the shard processes, the etcd server (None: no etcd faults)
    and the client whose conversations are measured; ``etcd_cluster`` for faults of
    an etcd cluster, ``proxies`` (shard id → the proxy in front of it) for network
    faults."""

    cluster: ShardCluster
    etcd: EtcdServer | None
    client: ShardClient
    etcd_cluster: EtcdCluster | None = None
    proxies: dict[str, TcpProxy] = field(default_factory=dict)


class Fault(Protocol):
    """One fault: applied, held for a while by the runner, then healed."""

    on_shard: ClassVar[bool]

    @property
    def name(self) -> str:
        """What the summary calls it."""
        ...

    def apply(self, env: ChaosEnv, target: str) -> None:
        """Inflict the fault (``target``: the shard, or "" for faults of etcd)."""
        ...

    def heal(self, env: ChaosEnv, target: str) -> None:
        """Undo it, and return once the system can converge (e.g. the shard is back)."""
        ...


@dataclass(frozen=True)
class Kill:
    """SIGKILL the shard; heal: start it again under the same id."""

    name: str = "kill"
    on_shard: ClassVar[bool] = True

    def apply(self, env: ChaosEnv, target: str) -> None:
        env.cluster.kill(target)

    def heal(self, env: ChaosEnv, target: str) -> None:
        env.cluster.wait_for(lambda t: target not in t.shards, timeout=30)
        env.cluster.add(target)


@dataclass(frozen=True)
class Stop:
    """SIGSTOP the shard (a wedged process: connected, registered, silent); heal:
    SIGCONT, then wait until it is registered again."""

    hold_s: float = 3.0
    name: str = "stop"
    on_shard: ClassVar[bool] = True

    def apply(self, env: ChaosEnv, target: str) -> None:
        env.cluster.stop(target)

    def heal(self, env: ChaosEnv, target: str) -> None:
        env.cluster.resume(target)
        env.cluster.wait_for(lambda t: target in t.shards, timeout=30)


@dataclass
class ZoneOutage:
    """SIGKILL every shard of the target's zone at once; heal: once their leases expired,
    start them again under the same ids, in the same zone."""

    hold_s: float = 3.0
    name: str = "zone_outage"
    on_shard: ClassVar[bool] = True
    killed: list[str] = field(default_factory=list)
    """The shards the last :meth:`apply` killed."""

    def apply(self, env: ChaosEnv, target: str) -> None:
        zone = env.cluster[target].zone
        self.killed = [sid for sid, p in env.cluster.shards.items() if p.zone == zone]
        for shard_id in self.killed:
            env.cluster.kill(shard_id)

    def heal(self, env: ChaosEnv, target: str) -> None:
        zone = env.cluster[target].zone
        gone = set(self.killed)
        env.cluster.wait_for(lambda t: not gone & set(t.shards), timeout=30)
        for shard_id in self.killed:
            env.cluster.add(shard_id, zone=zone)


@dataclass(frozen=True)
class EtcdRestart:
    """Stop etcd and start it again (same data); with an etcd cluster instead
    (``ChaosEnv.etcd_cluster``), every member at once. Heal: wait until the client
    follows the topology again."""

    hold_s: float = 2.0
    name: str = "etcd_restart"
    on_shard: ClassVar[bool] = False

    def apply(self, env: ChaosEnv, target: str) -> None:
        if env.etcd is None and env.etcd_cluster is not None:
            for member in env.etcd_cluster.running:
                env.etcd_cluster.stop(member)
            return
        assert env.etcd is not None, "EtcdRestart needs ChaosEnv.etcd or ChaosEnv.etcd_cluster"
        env.etcd.stop()

    def heal(self, env: ChaosEnv, target: str) -> None:
        if env.etcd is None and env.etcd_cluster is not None:
            env.etcd_cluster.start()
            env.etcd_cluster.wait_for_leader(30)
        else:
            assert env.etcd is not None
            env.etcd.start()
        wait_until(lambda: env.client.source.staleness() == 0.0, 30, "the client following etcd")


@dataclass(frozen=True)
class Compaction:
    """Compact etcd's history at its current revision (watchers resync)."""

    hold_s: float = 0.5
    name: str = "compaction"
    on_shard: ClassVar[bool] = False

    def apply(self, env: ChaosEnv, target: str) -> None:
        if env.etcd is None and env.etcd_cluster is not None:
            etcd = env.etcd_cluster.client()
        else:
            assert env.etcd is not None, "Compaction needs ChaosEnv.etcd or ChaosEnv.etcd_cluster"
            etcd = env.etcd.client()
        try:
            etcd.compact(etcd.revision())
        finally:
            etcd.close()

    def heal(self, env: ChaosEnv, target: str) -> None:
        """Nothing to undo."""


@dataclass
class FaultResult:
    """What one fault cost (seconds; None when it does not apply or never happened)."""

    name: str
    target: str
    avoided_after_s: float | None
    converged_s: float | None
    turns: int
    failed_turns_by_cause: dict[str, int]
    p99_ms: float
    steady_p99_ms: float
    failure_examples: dict[str, str] = field(default_factory=dict)
    """The first failure's message of each cause."""

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values."""
        return {
            "name": self.name,
            "target": self.target,
            "avoided_after_s": _round(self.avoided_after_s),
            "converged_s": _round(self.converged_s),
            "turns": self.turns,
            "failed_turns_by_cause": dict(self.failed_turns_by_cause),
            "p99_ms": round(self.p99_ms, 1),
            "steady_p99_ms": round(self.steady_p99_ms, 1),
            "failure_examples": dict(self.failure_examples),
        }


@dataclass
class _Turn:
    key: str
    started: float
    ended: float
    failure: str = ""
    detail: str = ""


@dataclass
class _Conversation:
    key: str
    acked: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


class ChaosRunner:
    """Chat conversations in a loop (one thread each) while faults are applied in turn.

    Args:
        env: the cluster, etcd and client.
        sessions: how many conversations talk at once.
        turn_timeout_s: each turn's deadline.
        steady_s: how long to measure steady state before the first fault, and to let
            things settle between faults.
    """

    def __init__(
        self,
        env: ChaosEnv,
        *,
        sessions: int = 6,
        turn_timeout_s: float = 10.0,
        steady_s: float = 1.0,
    ) -> None:
        self.env = env
        self.turn_timeout_s = turn_timeout_s
        self.steady_s = steady_s
        self.conversations = [_Conversation(f"chaos-{i}") for i in range(sessions)]
        self._chat = env.client.stub(chat_pb2_grpc.ChatStub)
        self._turns: list[_Turn] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost_examples: dict[str, str] = {}
        """Per conversation with lost turns, what :meth:`lost_turns` found (who answered
        its history, how many turns it held and how many were acknowledged)."""

    def run(self, faults: Sequence[Fault]) -> list[FaultResult]:
        """Talk, apply each fault in turn (held for its ``hold_s``, default 3 s),
        heal it, wait for convergence; return one result per fault."""
        self._stop.clear()
        threads = [threading.Thread(target=self._talk, args=(c,)) for c in self.conversations]
        for thread in threads:
            thread.start()
        try:
            self._stop.wait(self.steady_s)
            steady = self._p99(self._window(0.0, time.monotonic()))
            return [self._one(fault, steady) for fault in faults]
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()

    def lost_turns(self) -> int:
        """Acknowledged turns missing from their conversation's history (or out of
        order); call after :meth:`run`."""
        lost = 0
        self.lost_examples = {}
        for conversation in self.conversations:
            reply = self._chat.History(
                chat_pb2.HistoryRequest(), session_key=conversation.key, idempotent=True
            )
            held = [turn.prompt for turn in reply.turns]
            kept = [prompt for prompt in held if prompt in set(conversation.acked)]
            missing = len(conversation.acked) - len(kept)
            if kept != conversation.acked[: len(kept)]:
                missing += 1
            if missing:
                self.lost_examples[conversation.key] = (
                    f"shard {reply.shard_id} answered {len(held)} turns, "
                    f"{len(conversation.acked)} acknowledged, {missing} lost"
                )
            lost += missing
        return lost

    # -- internals ----------------------------------------------------------------------

    def _one(self, fault: Fault, steady_p99: float) -> FaultResult:
        target = self.env.client.route(self.conversations[0].key).shard.id
        if not type(fault).on_shard:
            target = ""
        applied = time.monotonic()
        fault.apply(self.env, target)
        avoided = self._hold(target, applied + getattr(fault, "hold_s", 3.0))
        fault.heal(self.env, target)
        healed = time.monotonic()
        converged = self._converged(healed)
        ended = time.monotonic()
        window = self._window(applied, ended)
        failures = Counter(t.failure for t in window if t.failure)
        examples: dict[str, str] = {}
        for turn in window:
            if turn.failure:
                examples.setdefault(turn.failure, turn.detail[:300])
        self._stop.wait(self.steady_s)
        return FaultResult(
            fault.name,
            target,
            None if avoided is None else avoided - applied,
            None if converged is None else converged - healed,
            len(window),
            dict(failures),
            self._p99(window),
            steady_p99,
            examples,
        )

    def _hold(self, target: str, until: float) -> float | None:
        """Wait until ``until``; return when the client stopped sending to ``target``
        (ejected it, or it left the client's topology), None if it did not by then."""
        client = self.env.client
        seen: float | None = None
        while (now := time.monotonic()) < until:
            if (
                target
                and seen is None
                and (
                    target in client.outlier.ejected()
                    or target not in client.source.current().shards
                )
            ):
                seen = now
            self._stop.wait(0.01)
        return seen

    def _converged(self, since: float) -> float | None:
        """When every conversation completed a turn begun after ``since`` (None: not
        within the turn timeout plus 30 s)."""
        deadline = time.monotonic() + self.turn_timeout_s + 30
        keys = {c.key for c in self.conversations}
        while time.monotonic() < deadline:
            with self._lock:
                done = [t for t in self._turns if t.started >= since and not t.failure]
            if {t.key for t in done} >= keys:
                return max(t.ended for t in done)
            self._stop.wait(0.05)
        return None

    def _window(self, start: float, end: float) -> list[_Turn]:
        with self._lock:
            return [t for t in self._turns if start <= t.started <= end]

    @staticmethod
    def _p99(turns: list[_Turn]) -> float:
        latencies = sorted((t.ended - t.started) * 1000 for t in turns if not t.failure)
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]

    def _talk(self, conversation: _Conversation) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            prompt = f"{conversation.key}-{n}"
            started = time.monotonic()
            request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=3)
            failure = detail = ""
            try:
                list(
                    self._chat.Generate(
                        request, session_key=conversation.key, timeout=self.turn_timeout_s
                    )
                )
                conversation.acked.append(prompt)
            except ShardRouteError as error:
                failure, detail = _cause(error), str(error)
                conversation.unknown.append(prompt)
            with self._lock:
                self._turns.append(
                    _Turn(conversation.key, started, time.monotonic(), failure, detail)
                )
            if failure:
                self._stop.wait(0.05)


def _cause(error: ShardRouteError) -> str:
    """The error's class, with the gRPC status code when it has one:
    ``CallFailed(ABORTED)``."""
    code = getattr(error, "code", None)
    name = getattr(code, "name", None)
    return f"{type(error).__name__}({name})" if isinstance(name, str) else type(error).__name__


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
