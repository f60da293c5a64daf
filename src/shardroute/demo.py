"""``shardroute demo``: chat traffic over real shards, with a shard killed and one drained.

Everything runs on this machine and is cleaned up at the end (Ctrl-C included): an
embedded etcd in a temp dir, 4 chat shards in 2 zones (one process each), and a
``ShardClient`` in this process sending chat turns for many sessions from worker
threads. Midway one shard is SIGKILLed and another drained (SIGTERM); the live view
shows the shards, their load, what the client did and etcd's database size, and a
summary ends the run, also when a scripted step (kill, add, drain) failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from shardroute.client import ShardClient
from shardroute.errors import EtcdUnavailable, ShardRouteError
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc
from shardroute.model import ShardState
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import DEFAULT_QUOTA_BACKEND_BYTES, EtcdServer

__all__ = ["DemoConfig", "run_demo"]

SERVICE = "chat"
CLIENT_ZONE = "zone-a"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs."""

    duration_s: float = 20.0
    shards: int = 4
    sessions: int = 200
    workers: int = 8
    max_tokens: int = 8
    kill_at: float = 0.3
    """Share of the duration after which one shard is SIGKILLed."""
    add_at: float = 0.5
    """Share of the duration after which a shard is added."""
    drain_at: float = 0.7
    """Share of the duration after which another shard is drained."""
    seed: int = 7
    turns_per_conversation: tuple[int, int] = (5, 40)
    """A conversation lasts this many turns (uniform, inclusive), then the demo ends it
    (``end_session``: its state and override are deleted) and starts a new one."""
    session_ttl_s: float = 120.0
    """Idle conversations expire from the session store after this long."""
    etcd_quota_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    """The embedded etcd's space quota (``--quota-backend-bytes``)."""


MiB = 1024 * 1024


class _EtcdSpace:
    """Samples the embedded etcd's database size and alarms about every second, from a
    thread, for the live view and the summary."""

    def __init__(self, etcd: EtcdServer, interval_s: float = 1.0) -> None:
        self.quota = etcd.quota_backend_bytes
        self._client: EtcdClient = etcd.client(timeout=2.0)
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.db_size = 0
        self.peak = 0
        self.nospace_now = False
        self.nospace_seen = False
        self._thread = threading.Thread(target=self._run, name="demo-etcd-space", daemon=True)

    def start(self) -> _EtcdSpace:
        self.sample()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        """Read etcd's db size and alarms once; keeps the last values when etcd is away."""
        try:
            size = self._client.status().db_size
            nospace = any(alarm.alarm == "NOSPACE" for alarm in self._client.alarms())
        except EtcdUnavailable:
            return
        with self._lock:
            self.db_size = size
            self.peak = max(self.peak, size)
            self.nospace_now = nospace
            self.nospace_seen = self.nospace_seen or nospace

    def lines(self) -> list[str]:
        """The live view's etcd lines: the db size and, under NOSPACE, what it means."""
        quota = f"{self.quota / MiB:.0f} MiB" if self.quota else "etcd's default"
        with self._lock:
            size, peak, nospace = self.db_size, self.peak, self.nospace_now
        lines = [f"etcd db {size / MiB:.1f} MiB (peak {peak / MiB:.1f} MiB, quota {quota})"]
        if nospace:
            lines.append(
                f"etcd NOSPACE: etcd's database hit its {quota} quota, so it refuses every "
                "write (turn checkpoints, load reports, new shards); data already saved is "
                "safe. Fix: compact, defrag, then 'etcdctl alarm disarm' (docs/operations.md)"
            )
        return lines

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()  # the last word for the summary
        self._client.close()


@dataclass
class _Tally:
    """What the workers observed; guarded by ``lock``.

    Every reply says how many turns its shard holds for the session (``turns_held``,
    this turn included). The demo knows how many of the session's turns were answered,
    so it can tell a turn lost (the shard holds fewer) from a conversation that moved
    with its history (another shard, the right count).
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    turns: int = 0
    errors: int = 0
    retried: int = 0
    affinity_checks: int = 0
    affinity_hits: int = 0
    lost_turns: int = 0
    served: Counter[str] = field(default_factory=Counter)
    last_shard: dict[str, str] = field(default_factory=dict)
    answered: Counter[str] = field(default_factory=Counter)
    unsure: set[str] = field(default_factory=set)
    """Sessions whose last turn failed mid-reply: it may or may not have been applied."""
    moved: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    """Sessions with a turn in flight: a conversation has one turn at a time."""
    generation: Counter[int] = field(default_factory=Counter)
    """Per conversation slot: how many conversations it has ended (its key's suffix)."""
    length: dict[int, int] = field(default_factory=dict)
    """Per conversation slot: how many turns its current conversation lasts."""
    ended: int = 0

    def key(self, slot: int) -> str:
        """The session key of the slot's current conversation."""
        return f"conversation-{slot:04d}-{self.generation[slot]}"

    def forget(self, slot: int, session: str) -> None:
        """The slot's conversation ended: the next one gets a new key."""
        self.generation[slot] += 1
        self.length.pop(slot, None)
        self.ended += 1
        for table in (self.answered, self.last_shard):
            table.pop(session, None)
        self.unsure.discard(session)

    def record(self, session: str, shard: str, held: int) -> None:
        """A turn of ``session`` answered by ``shard``, which holds ``held`` turns."""
        expected = self.answered[session] + 1
        if session in self.unsure and held == expected + 1:
            expected += 1  # the failed attempt had been applied before the reply broke
        self.unsure.discard(session)
        if held < expected:
            self.lost_turns += expected - held
        self.answered[session] = held
        self.turns += 1
        self.served[shard] += 1
        previous = self.last_shard.get(session)
        if previous is not None:
            self.affinity_checks += 1
            if previous == shard:
                self.affinity_hits += 1
            elif held >= expected:
                self.moved.add(session)  # continued elsewhere with its whole history
        self.last_shard[session] = shard


def _turn(chat: Any, session: str, max_tokens: int) -> tuple[str, int] | None:
    """One chat turn; returns (shard, turns_held), or None for an empty reply."""
    request = chat_pb2.GenerateRequest(prompt="tell me more", max_tokens=max_tokens)
    last: Any = None
    for token in chat.Generate(request, session_key=session, timeout=10):
        last = token
    if last is None:
        return None
    return last.shard_id, last.turns_held


def _worker(
    client: ShardClient, config: DemoConfig, tally: _Tally, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    chat = client.stub(chat_pb2_grpc.ChatStub)
    slots = list(range(config.sessions))
    weights = [1.0 / (i + 1) for i in range(config.sessions)]  # Zipf-like popularity
    shortest, longest = config.turns_per_conversation
    while not stop.is_set():
        slot = rng.choices(slots, weights)[0]
        with tally.lock:
            session = tally.key(slot)
            if session in tally.busy:
                continue  # someone is mid-turn in this conversation: pick another
            tally.busy.add(session)
            length = tally.length.setdefault(slot, rng.randint(shortest, longest))
        try:
            _conversation_turn(chat, session, config, tally, stop)
            with tally.lock:
                over = tally.answered[session] >= length
            if over and not stop.is_set():
                _end_conversation(client, slot, session, tally, stop)
        except Exception:  # a bug must show in the summary, not end the thread quietly
            logging.getLogger("shardroute.demo").exception("turn of %s failed", session)
            with tally.lock:
                tally.errors += 1
        finally:
            with tally.lock:
                tally.busy.discard(session)


def _end_conversation(
    client: ShardClient, slot: int, session: str, tally: _Tally, stop: threading.Event
) -> None:
    """End a conversation that had its turns (retried like an application would)."""
    for attempt in range(3):
        try:
            client.end_session(session, timeout=10)
            break
        except ShardRouteError:
            if stop.is_set():
                return
            stop.wait(0.05 * (attempt + 1))
    else:
        with tally.lock:
            tally.errors += 1
        return
    with tally.lock:
        tally.forget(slot, session)


def _conversation_turn(
    chat: Any, session: str, config: DemoConfig, tally: _Tally, stop: threading.Event
) -> None:
    """One turn of ``session``, retried like an application would (3 tries)."""
    result = None
    for attempt in range(3):
        try:
            result = _turn(chat, session, config.max_tokens)
            break
        except ShardRouteError:
            if stop.is_set():
                return  # shutting down (Ctrl-C): the client or shards are going away
            with tally.lock:
                tally.unsure.add(session)
                tally.retried += 1
            stop.wait(0.05 * (attempt + 1))  # back off before the application retries
    with tally.lock:
        if result is None:
            tally.errors += 1
        else:
            tally.record(session, *result)


def _view(
    client: ShardClient, tally: _Tally, elapsed: float, events: list[str], space: _EtcdSpace
) -> str:
    topology = client.source.current()
    stats = client.stats.snapshot()
    with tally.lock:
        served = dict(tally.served)
        turns, errors, lost = tally.turns, tally.errors, tally.lost_turns
        ended = tally.ended
        hit = tally.affinity_hits / tally.affinity_checks if tally.affinity_checks else 1.0
    lines = [
        f"shardroute demo  t={elapsed:5.1f}s  turns={turns}  errors={errors}  "
        f"failovers={stats.get('failovers', 0)}  "
        f"spills={stats.get('spill', 0) + stats.get('zone_fallback', 0)}  "
        f"affinity={hit:.1%}  lost_turns={lost}  redirects={stats.get('redirects', 0)}  "
        f"ended={ended}",
        f"{'SHARD':10} {'ZONE':8} {'STATE':9} {'INFLIGHT':>8} {'SESSIONS':>8} {'TURNS':>7}",
    ]
    for shard in topology.shards.values():
        load = topology.loads.get(shard.id)
        lines.append(
            f"{shard.id:10} {shard.zone:8} {shard.state.value:9} "
            f"{load.inflight if load else 0:>8} {load.sessions if load else 0:>8} "
            f"{served.get(shard.id, 0):>7}"
        )
    lines.extend(space.lines())
    lines.extend(f"  * {event}" for event in events[-4:])
    return "\n".join(lines)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(config: DemoConfig, *, live: TextIO | None = sys.stdout) -> dict[str, Any]:
    """Run the demo; returns the summary. ``live``: where the live view goes (or None).

    A scripted step (kill, add, drain) that raises a :class:`ShardRouteError` does not
    end the run: it is shown in the live view and recorded in the summary's ``events``
    and ``event_errors`` (and counted in ``errors``), and the run goes on.
    """
    started = time.monotonic()
    events: list[str] = []
    event_errors: list[str] = []
    lock = threading.Lock()  # events and event_errors are also written by drain threads
    tally = _Tally()
    stop = threading.Event()
    killed: list[str] = []
    added: list[str] = []
    drained: list[str] = []
    done: set[str] = set()
    drain_threads: list[threading.Thread] = []

    def note(text: str) -> None:
        with lock:
            events.append(text)

    def failed(step: str, exc: ShardRouteError) -> None:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        why = lines[0][:300] + (f" ... {lines[-1][:300]}" if len(lines) > 1 else "")
        text = f"{step} failed: {type(exc).__name__}: {why}"
        logging.getLogger("shardroute.demo").warning("%s", text)
        with lock:
            events.append(text)
            event_errors.append(text)

    def drain(victim: str, step: str) -> None:
        try:
            cluster.drain(victim)
        except ShardRouteError as exc:
            failed(step, exc)

    with contextlib.ExitStack() as cleanup, _sigterm_as_interrupt():
        etcd = cleanup.enter_context(EtcdServer(quota_backend_bytes=config.etcd_quota_bytes))
        space = _EtcdSpace(etcd).start()
        cleanup.callback(space.close)
        cluster = cleanup.enter_context(
            ShardCluster(
                etcd.endpoint,
                service=SERVICE,
                zones=("zone-a", "zone-b"),
                shard_kwargs={"session_ttl_s": config.session_ttl_s},
            )
        )
        cluster.start(config.shards)
        client = cleanup.enter_context(
            ShardClient.connect(etcd.endpoint, SERVICE, zone=CLIENT_ZONE)
        )
        note(f"etcd at {etcd.endpoint}; {config.shards} chat shards in zone-a/zone-b")
        workers = [
            threading.Thread(
                target=_worker, args=(client, config, tally, stop, config.seed + i), daemon=True
            )
            for i in range(config.workers)
        ]
        cleanup.callback(_join, workers)
        cleanup.callback(stop.set)
        for worker in workers:
            worker.start()
        t_start = time.monotonic()
        kill_t = t_start + config.duration_s * config.kill_at
        add_t = t_start + config.duration_s * config.add_at
        drain_t = t_start + config.duration_s * config.drain_at
        end_t = t_start + config.duration_s
        is_tty = live is not None and live.isatty()
        while (now := time.monotonic()) < end_t:
            at = f"t={now - t_start:.1f}s"
            if "kill" not in done and now >= kill_t:
                done.add("kill")
                victim = _pick(cluster, client, CLIENT_ZONE)
                try:
                    if victim is not None:
                        cluster.kill(victim)
                        killed.append(victim)
                        note(f"{at} SIGKILL {victim} (no goodbye)")
                except ShardRouteError as exc:
                    failed(f"{at} SIGKILL {victim}", exc)
            if "add" not in done and now >= add_t:
                done.add("add")
                try:
                    added.append(cluster.add(zone=CLIENT_ZONE))
                    note(f"{at} added {added[-1]} in {CLIENT_ZONE}")
                except ShardRouteError as exc:
                    failed(f"{at} adding a shard in {CLIENT_ZONE}", exc)
            if "drain" not in done and now >= drain_t:
                done.add("drain")
                victim = _pick(cluster, client, None, exclude=killed + added)
                if victim is not None:
                    drained.append(victim)
                    note(f"{at} drain {victim} (SIGTERM)")
                    thread = threading.Thread(
                        target=drain, args=(victim, f"{at} drain {victim}"), daemon=True
                    )
                    thread.start()
                    drain_threads.append(thread)
            if live is not None:
                with lock:
                    shown = list(events)
                view = _view(client, tally, time.monotonic() - t_start, shown, space)
                live.write(("\x1b[H\x1b[J" if is_tty else "") + view + "\n\n")
                live.flush()
            stop.wait(min(1.0, max(0.0, end_t - time.monotonic())))
        stop.set()
        _join(workers)
        for thread in drain_threads:
            thread.join(30)
        space.close()
        store = _store_activity(client)
        stats = client.stats.snapshot()
        with tally.lock, lock:
            checks = tally.affinity_checks
            summary: dict[str, Any] = {
                "requests": tally.turns + tally.errors,
                "errors": tally.errors + len(event_errors),
                "failovers": stats.get("failovers", 0),
                "spills": stats.get("spill", 0) + stats.get("zone_fallback", 0),
                "affinity_hit_rate": round(tally.affinity_hits / checks, 4) if checks else 1.0,
                "shards_killed": len(killed),
                "duration_s": round(time.monotonic() - t_start, 2),
                "lost_turns": tally.lost_turns,
                "sessions_migrated": len(tally.moved),
                "redirects": stats.get("redirects", 0),
                "shards_added": len(added),
                "shards_drained": len(drained),
                "turns_retried": tally.retried,
                "turns_by_shard": dict(sorted(tally.served.items())),
                "conversations_ended": tally.ended,
                "store_bytes_written_per_turn": store["bytes_per_checkpoint"],
                "etcd_db_mb_peak": round(space.peak / MiB, 1),
                "etcd_nospace": space.nospace_seen,
                "events": list(events),
                "event_errors": list(event_errors),
            }
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


def _store_activity(client: ShardClient) -> dict[str, Any]:
    """Checkpoints and session store bytes of the live shards (``GetStatus``); a killed
    shard's counters are gone with it, so this is the live shards' average."""
    import grpc

    from shardroute._proto import shard_pb2, shard_pb2_grpc

    stub: Any = shard_pb2_grpc.ShardControlStub
    checkpoints = written = 0
    for shard in client.source.current().shards.values():
        try:
            with grpc.insecure_channel(shard.address) as channel:
                status = stub(channel).GetStatus(shard_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError:
            continue  # a shard that just left
        checkpoints += status.checkpoints
        written += status.store_bytes_written
    per = round(written / checkpoints) if checkpoints else 0
    return {"checkpoints": checkpoints, "bytes_per_checkpoint": per}


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(15)


def _pick(
    cluster: ShardCluster, client: ShardClient, zone: str | None, exclude: Sequence[str] = ()
) -> str | None:
    topology = client.source.current()
    for shard_id in cluster.shard_ids:
        shard = topology.shards.get(shard_id)
        if shard is None or shard_id in exclude or shard.state is not ShardState.ACTIVE:
            continue
        if zone is None or shard.zone == zone:
            return shard_id
    return None


def main(duration_s: float, as_json: bool, **overrides: Any) -> int:
    """Entry point of ``shardroute demo``."""
    config = DemoConfig(duration_s=duration_s, **overrides)
    summary = run_demo(config, live=None if as_json else sys.stdout)
    if as_json:
        print(json.dumps(summary, separators=(",", ":")), flush=True)
    else:
        print("summary: " + json.dumps(summary, indent=2), flush=True)
    return 0
