"""The demo's run: the embedded etcd and shards, the scripted kill, add and drain, the
live view and the summary (what it shows: :mod:`shardroute.demo`)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

from shardroute.client import ShardClient
from shardroute.demo._config import CLIENT_ZONE, EXACTLY_ONCE, SERVICE, DemoConfig, MiB
from shardroute.demo._space import EtcdSpace
from shardroute.demo._traffic import Tally, worker
from shardroute.discovery.keys import KeySchema
from shardroute.errors import ShardRouteError
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.model import ShardState
from shardroute.security import ChannelMaker, TLSConfig
from shardroute.telemetry.top import reason_line
from shardroute.testing.certs import throwaway_tls
from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer
from shardroute.testing.redis import RedisServer

__all__ = ["main", "run_demo"]


def _view(
    client: ShardClient, tally: Tally, elapsed: float, events: list[str], space: EtcdSpace
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
        reason_line(stats),
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
    tally = Tally(idle_expiry_s=config.session_ttl_s)
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
        space = EtcdSpace(etcd).start()
        cleanup.callback(space.close)
        shard_kwargs: dict[str, Any] = {"session_ttl_s": config.session_ttl_s}
        redis = None
        if config.store == "redis":  # conversation state in Redis, topology in etcd
            redis = cleanup.enter_context(RedisServer())
            shard_kwargs["session_store"] = redis.url
        shard_tls = client_tls = None
        if config.tls:  # mutual TLS on every hop, throwaway certificates
            folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="shardroute-tls-"))
            shard_tls, client_tls = throwaway_tls(folder)
        cluster = cleanup.enter_context(
            ShardCluster(
                etcd.endpoint,
                service=SERVICE,
                zones=("zone-a", "zone-b"),
                shard_kwargs=shard_kwargs,
                tls=shard_tls,
            )
        )
        if config.shard_bound:  # in etcd before any shard starts: each reads it live
            admin = EtcdClient(EtcdOptions((etcd.endpoint,)))
            try:
                routing = {"routing": {"shard_bound": True}}
                admin.put(KeySchema(SERVICE).config, json.dumps(routing).encode())
            finally:
                admin.close()
        cluster.start(config.shards)
        client = cleanup.enter_context(
            ShardClient.connect(
                etcd.endpoint,
                SERVICE,
                zone=CLIENT_ZONE,
                tls=client_tls,
                retry=EXACTLY_ONCE,
                follow_overrides=config.follow_overrides,
            )
        )
        if client_tls is not None:
            note("mutual TLS on every hop (client, drains, moves), throwaway certificates")
        note(f"etcd at {etcd.endpoint}; {config.shards} chat shards in zone-a/zone-b")
        if redis is not None:
            note(f"session store: Redis at {redis.endpoint} (etcd: topology and overrides)")
        workers = [
            threading.Thread(
                target=worker, args=(client, config, tally, stop, config.seed + i), daemon=True
            )
            for i in range(config.workers)
        ]
        cleanup.callback(_join, workers)
        cleanup.callback(stop.set)
        for thread in workers:
            thread.start()
        t_start = time.monotonic()
        kill_t = t_start + config.duration_s * config.kill_at
        add_t = t_start + config.duration_s * config.add_at
        drain_t = t_start + config.duration_s * config.drain_at
        end_t = t_start + config.duration_s
        is_tty = live is not None and live.isatty()
        # Every scripted step runs, even when a slow one (adding a shard on a loaded
        # machine) pushes the next past the end: the run then lasts a little longer.
        while (now := time.monotonic()) < end_t or len(done) < 3:
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
            # A plain sleep, not stop.wait(): Ctrl-C lands in this thread, and a
            # KeyboardInterrupt inside Event.wait can leave the event's lock held, so
            # stop.set() in the cleanup below would block for ever (seen in CI: the
            # workers ran on after Ctrl-C). Nothing else sets stop while this loop runs.
            time.sleep(min(1.0, max(0.05, end_t - time.monotonic())))
        stop.set()
        _join(workers)
        for thread in drain_threads:
            thread.join(30)
        space.close()
        bytes_per_checkpoint = _store_bytes_per_checkpoint(client, client_tls)
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
                "routed_by_override": stats.get("override", 0),
                "shards_added": len(added),
                "shards_drained": len(drained),
                "turns_retried": tally.retried,
                "turns_by_shard": dict(sorted(tally.served.items())),
                "conversations_ended": tally.ended,
                "conversations_expired": tally.expired,
                "store_bytes_written_per_turn": bytes_per_checkpoint,
                "etcd_db_mb_peak": round(space.peak / MiB, 1),
                "etcd_nospace": space.nospace_seen,
                "events": list(events),
                "event_errors": list(event_errors),
                "session_store": config.store,
                "tls": config.tls,
                "shard_bound": config.shard_bound,
            }
        if redis is not None:
            summary["redis_used_memory_mb"] = round(redis.used_memory() / MiB, 1)
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


def _store_bytes_per_checkpoint(client: ShardClient, tls: TLSConfig | None) -> int:
    """Session store bytes per checkpoint over the live shards (``GetStatus``); a killed
    shard's counters are gone with it, so this is the live shards' average."""
    import grpc

    from shardroute._proto import shard_pb2
    from shardroute.sessions.migrator import control_stub

    checkpoints = written = 0
    channels = ChannelMaker(tls)
    for shard in client.source.current().shards.values():
        try:
            with channels.sync_channel(shard) as channel:
                status = control_stub(channel).GetStatus(shard_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError:
            continue  # a shard that just left
        checkpoints += status.checkpoints
        written += status.store_bytes_written
    return round(written / checkpoints) if checkpoints else 0


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
