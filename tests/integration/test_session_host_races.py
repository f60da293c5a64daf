"""Races in the shard-side session host (review findings), each pinned against real etcd:
late imports, exports that outlive their mover, stale freezes and abandoned fences,
cancelled and queued asyncio calls, stale hints, the ABORTED answers, idle eviction.

The hosts are driven directly (no gRPC) where the race needs precise interleaving; the
topology is "perfectly fresh": its overrides are read from etcd on every look-up. The
host is shared by both shells; the tests that go through a shard server run on both
(``ShardServer`` and ``AsyncShardServer``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from typing import Any

import grpc
import pytest
from shells import Shell

from shardroute import metadata
from shardroute._proto import shard_pb2, shard_pb2_grpc
from shardroute.errors import ConfigError, MalformedRecord, Refused, StaleState
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.examples.chat import AsyncChatShard, ChatShard, chat_pb2, chat_pb2_grpc
from shardroute.model import Override, Topology
from shardroute.server import SessionHost
from shardroute.sessions import EtcdSessionStore, InMemorySessionStore, OverrideStore
from shardroute.sessions.applied import AppliedTurn
from shardroute.testing.etcd import EtcdServer

K = "k1"


class _EtcdOverrides(Mapping[str, Override]):
    """A topology's overrides that are always current: each look-up reads etcd."""

    def __init__(self, store: OverrideStore) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Override:
        try:
            found = self._store.get(key)
        except MalformedRecord:  # as the real watch does: a malformed override is skipped
            raise KeyError(key) from None
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class World:
    """Shards A, T and C of service "chat" sharing one etcd (store and overrides)."""

    def __init__(self, etcd: EtcdClient, live: tuple[str, ...] = ("A", "T", "C")) -> None:
        self.etcd = etcd
        self.store = EtcdSessionStore(etcd, "chat")
        self.overrides = OverrideStore(etcd, "chat")
        self.live: dict[str, Any] = {shard: object() for shard in live}

    def topology(self) -> Topology:
        return Topology("chat", shards=self.live, overrides=_EtcdOverrides(self.overrides))

    def host(
        self,
        shard: str,
        hold: float = 1.0,
        lease: Callable[[], int | None] | None = None,
        **kwargs: Any,
    ) -> SessionHost:
        host = SessionHost(shard, hold_timeout_s=hold, **kwargs)
        host.attach(self.store, overrides=self.overrides, topology=self.topology, lease=lease)
        return host

    def fence(self, key: str, owner: str, moving_to: str) -> Override:
        current = self.overrides.get(key)
        epoch = current.epoch + 1 if current is not None else 1
        fenced = self.overrides.swap(key, current, Override(owner, epoch, moving_to))
        assert fenced is not None
        return fenced

    def stored(self, key: str) -> list[str]:
        stored = self.store.load(key)
        assert stored is not None
        turns: list[str] = SessionHost("x").codec.decode(stored.data)
        return turns


def turn(host: SessionHost, key: str, text: str, reason: str | None = None) -> None:
    entry = host.begin(key, reason)
    try:
        host.checkpoint(key, entry, [*(entry.state or []), text])
    finally:
        host.end(key, entry)


@pytest.fixture
def world(etcd_endpoint: str) -> Iterator[World]:
    client = EtcdClient(EtcdOptions(endpoints=(etcd_endpoint,)))
    yield World(client)
    client.close()


def _in_thread(fn: Callable[[], Any]) -> futures.Future[Any]:
    pool = futures.ThreadPoolExecutor(1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


# -- 1. a late import never overwrites the new owner's copy ---------------------------------


def test_a_late_import_with_a_stale_epoch_is_refused_and_the_answered_turn_stands(
    world: World,
) -> None:
    a, t = world.host("A"), world.host("T")
    turn(a, K, "t1")
    world.overrides.swap(K, None, Override("A", 1))
    fence = world.fence(K, "A", "T")
    data = a.export(K, fence.epoch)
    turn(t, K, "t2", reason="failover")  # T takes over (epoch 3) and answers a turn
    with pytest.raises(Refused) as refused:
        t.import_state(K, fence.epoch, data)  # the mover's import lands late
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    turn(t, K, "t3")
    assert world.stored(K) == ["t1", "t2", "t3"]


def test_an_import_of_bytes_older_than_the_store_is_refused(world: World) -> None:
    a, t = world.host("A"), world.host("T")
    turn(a, K, "t1")
    data = a.export(K, 1)  # no fence here: only the bytes check can catch it
    a.release(K, 1, "")
    turn(a, K, "t2")  # answered after the export
    with pytest.raises(Refused) as refused:
        t.import_state(K, 1, data)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "not the stored state" in refused.value.details and K not in t
    # The current bytes are accepted, paired with the current version.
    assert t.import_state(K, 1, a.export(K, 1)) > 0
    stored = world.store.load(K)
    assert stored is not None and t._held[K].version == stored.version


def test_an_import_with_a_version_older_than_the_store_is_refused(world: World) -> None:
    from shardroute.sessions.handoff import import_version

    a, t = world.host("A"), world.host("T")
    turn(a, K, "t1")
    data, version = a.export(K, 1), a.exported_version(K)
    assert version > 0
    a.release(K, 1, "")
    turn(a, K, "t2")  # answered after the export: the store moved on
    token = import_version.set(version)
    try:
        with pytest.raises(Refused) as refused:
            t.import_state(K, 1, data)
    finally:
        import_version.reset(token)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "a turn was saved after the export" in refused.value.details and K not in t
    # The current bytes with their version are accepted, with no read of the state.
    data, version = a.export(K, 1), a.exported_version(K)
    token = import_version.set(version)
    try:
        assert t.import_state(K, 1, data) > 0
    finally:
        import_version.reset(token)
    assert t._held[K].version == version


def test_an_import_never_replaces_a_copy_this_shard_serves() -> None:
    store = InMemorySessionStore()
    t = SessionHost("T")
    t.attach(store)
    turn(t, K, "t1")  # T serves K (no override: standalone)
    with pytest.raises(Refused) as refused:
        t.import_state(K, 1, b'["t1"]')
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert t.peek(K) == ["t1"] and not t._held[K].imported


def test_an_import_replaces_a_stale_copy_the_override_gives_to_another_shard(
    world: World,
) -> None:
    a, t = world.host("A"), world.host("T")
    turn(t, K, "t1")  # T served K once ...
    turn(a, K, "t2", reason="failover")  # ... A took it over (override {A, 1})
    fence = world.fence(K, "A", "T")  # and now moves it back to T
    data = a.export(K, fence.epoch)
    assert t.import_state(K, fence.epoch, data) == len(data)
    assert t.peek(K) == ["t1", "t2"]


# -- 2. an export that waits past its mover never freezes the session -----------------------


def test_an_export_released_while_waiting_for_the_turn_does_not_freeze(world: World) -> None:
    a = world.host("A")
    turn(a, K, "t1")
    entry = a.begin(K)  # a long turn in flight
    fence = world.fence(K, "A", "T")
    exported = _in_thread(lambda: a.export(K, fence.epoch))
    with pytest.raises(futures.TimeoutError):
        exported.result(timeout=0.05)  # it waits for the turn
    # The mover timed out and rolled back: override {A, e+2}, release to A.
    world.overrides.swap(K, fence, Override("A", fence.epoch + 1))
    a.release(K, fence.epoch + 1, "")
    a.checkpoint(K, entry, ["t1", "t2"])
    a.end(K, entry)
    with pytest.raises(Refused) as refused:
        exported.result(timeout=5)
    assert refused.value.code in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION)
    assert not a.is_frozen(K)
    turn(a, K, "t3")  # served at once, not held
    assert world.stored(K) == ["t1", "t2", "t3"]


def test_an_export_whose_epoch_goes_stale_during_the_wait_does_not_freeze(
    world: World,
) -> None:
    a = world.host("A")
    turn(a, K, "t1")
    entry = a.begin(K)
    fence = world.fence(K, "A", "T")
    exported = _in_thread(lambda: a.export(K, fence.epoch))
    with pytest.raises(futures.TimeoutError):
        exported.result(timeout=0.05)
    world.overrides.swap(K, fence, Override("A", fence.epoch + 1))  # seen by the watch only
    a.end(K, entry)
    with pytest.raises(Refused) as refused:
        exported.result(timeout=5)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert not a.is_frozen(K)


class _ExportWatch:
    """Sets ``exported`` once the export hook returned or raised (the handler is done)."""

    exported: threading.Event

    def export_session(self, session_key: str, epoch: int) -> bytes:
        try:
            return super().export_session(session_key, epoch)  # type: ignore[misc]
        finally:
            self.exported.set()


class WatchedChatShard(_ExportWatch, ChatShard):
    exported = threading.Event()


class WatchedAsyncChatShard(_ExportWatch, AsyncChatShard):
    exported = threading.Event()


def test_export_over_grpc_gives_up_at_the_rpc_deadline_without_freezing(kind: str) -> None:
    cls = WatchedChatShard if kind == "sync" else WatchedAsyncChatShard
    cls.exported = threading.Event()
    with Shell(kind, cls=cls, shard_id="src", service="chat", etcd=None, token_delay_s=0) as s:
        shard = s.start().server
        host = shard.sessions
        turn(host, K, "t1")
        entry = host.begin(K)  # a turn that outlives the mover's deadline
        try:
            with grpc.insecure_channel(shard.address) as channel:
                control = shard_pb2_grpc.ShardControlStub(channel)
                request = shard_pb2.ExportSessionRequest(session_key=K, epoch=1)
                with pytest.raises(grpc.RpcError) as caught:
                    list(control.ExportSession(request, timeout=0.5))
            assert caught.value.code() in (
                grpc.StatusCode.ABORTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        finally:
            host.end(K, entry)
        assert shard.exported.wait(5)  # (a stale export would have frozen it by now)
        assert not host.is_frozen(K)
        turn(host, K, "t2")


# -- 3. freeze bookkeeping, abandoned fences ------------------------------------------------


def test_a_frozen_copy_unfreezes_when_the_override_shows_a_rollback(world: World) -> None:
    a = world.host("A")
    turn(a, K, "t1")
    fence = world.fence(K, "A", "T")
    a.export(K, fence.epoch)
    assert a.is_frozen(K)
    # Rolled back in etcd, but the release never reached A.
    world.overrides.swap(K, fence, Override("A", fence.epoch + 1))
    turn(a, K, "t2")
    assert not a.is_frozen(K) and world.stored(K) == ["t1", "t2"]


def test_a_frozen_copy_is_dropped_and_redirected_when_the_move_committed(
    world: World,
) -> None:
    a = world.host("A")
    turn(a, K, "t1")
    fence = world.fence(K, "A", "T")
    a.export(K, fence.epoch)
    world.overrides.swap(K, fence, Override("T", fence.epoch + 1))  # commit, no release
    with pytest.raises(Refused) as refused:
        a.begin(K)
    assert (refused.value.code, refused.value.redirect) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "T",
    )
    assert K not in a


def test_an_abandoned_fence_is_reclaimed_after_the_hold_timeout(world: World) -> None:
    a = world.host("A", hold=0.2)
    turn(a, K, "t1")
    fence = world.fence(K, "A", "T")
    a.export(K, fence.epoch)  # the mover fenced, exported, then died
    turn(a, K, "t2")  # held for 0.2 s, then reclaimed and served
    now = world.overrides.get(K)
    assert now is not None and (now.owner, now.epoch, now.moving_to) == ("A", fence.epoch + 1, "")
    assert not a.is_frozen(K) and a.reclaims_total == 1
    assert world.stored(K) == ["t1", "t2"]
    # A mover that was only slow loses its commit (the fence's revision moved).
    with pytest.raises(StaleState):
        world.overrides.swap(K, fence, Override("T", fence.epoch + 1))


def test_a_hold_times_out_with_aborted_when_the_fence_keeps_moving(world: World) -> None:
    a = world.host("A", hold=0.2)
    turn(a, K, "t1")
    world.fence(K, "A", "T")
    looked = threading.Event()

    def topology() -> Topology:
        looked.set()
        return world.topology()

    a.attach(world.store, overrides=world.overrides, topology=topology)
    result = _in_thread(lambda: a.begin(K))
    assert looked.wait(5)  # the call saw the fence and holds on it
    # Meanwhile the fence moves on (another mover, a newer epoch): not abandoned.
    world.overrides.swap(K, world.overrides.get(K), Override("A", 5, "C"))
    with pytest.raises(Refused) as refused:
        result.result(timeout=5)
    assert refused.value.code is grpc.StatusCode.ABORTED
    assert "nothing was executed; retry" in refused.value.details
    assert a.reclaims_total == 0


# -- 7. hold and busy timeouts answer ABORTED on the wire -----------------------------------


def _generate_error(address: str, key: str) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatStub(channel)
        request = chat_pb2.GenerateRequest(session_key=key, prompt="hi", max_tokens=3)
        try:
            list(stub.Generate(request))
        except grpc.RpcError as exc:
            return exc
    raise AssertionError("expected an error")


def test_hold_and_busy_timeouts_answer_aborted_nothing_executed(kind: str) -> None:
    with Shell(
        kind, shard_id="s", service="chat", etcd=None, token_delay_s=0, hold_timeout_s=0.2
    ).start() as s:
        host = s.server.sessions
        address = s.server.address
        turn(host, "frozen", "t1")
        host.export("frozen", 1)  # a move in progress (standalone: nothing to reclaim)
        error = _generate_error(address, "frozen")
        assert error.code() is grpc.StatusCode.ABORTED
        assert "is moving; nothing was executed; retry" in (error.details() or "")
        turn(host, "busy", "t1")
        entry = host.begin("busy")
        try:
            error = _generate_error(address, "busy")
        finally:
            host.end("busy", entry)
        assert error.code() is grpc.StatusCode.ABORTED
        assert "busy with another turn; nothing was executed" in (error.details() or "")
        assert host.peek("busy") == ["t1"]


# -- 4, 5. asyncio: cancelled waits, queued calls -------------------------------------------


class _Context:
    def __init__(self, key: str) -> None:
        self._md = ((metadata.SESSION_KEY, key),)

    def invocation_metadata(self) -> Any:
        return self._md

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        raise Refused(code, details)


class CountingHost(SessionHost):
    """Counts the calls of begin that started (a waiting call is one that started)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.begins = 0
        self._count_lock = threading.Lock()

    def begin(self, session_key: str, reason: str | None = None) -> Any:
        with self._count_lock:
            self.begins += 1
        return super().begin(session_key, reason)


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


def test_a_cancelled_async_call_does_not_leave_the_session_locked() -> None:
    async def main() -> None:
        host = CountingHost("A", hold_timeout_s=5.0)
        host.attach(InMemorySessionStore())
        turn(host, K, "t1")
        entry = host.begin(K)  # turn 1 in flight

        async def call(text: str) -> None:
            async with host.aturn(_Context(K)) as session:
                await session.checkpoint([*session.state, text])

        waiting = asyncio.create_task(call("t2"))
        await _until(lambda: host.begins == 2)  # call 2 waits for the lock in a thread
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        host.end(K, entry)  # turn 1 ends: the cancelled call's thread takes the lock
        await asyncio.wait_for(call("t3"), 3)  # ... and gives it back
        assert host.peek(K) == ["t1", "t3"] and not host._held[K].busy
        host.close()

    asyncio.run(main())


def test_async_calls_queued_on_one_busy_session_do_not_starve_the_shard() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(futures.ThreadPoolExecutor(2))  # checkpoints run here
        host = CountingHost("A", hold_timeout_s=5.0)
        host.attach(InMemorySessionStore())
        turn(host, K, "t0")
        release = asyncio.Event()

        async def call(text: str, key: str = K, first: bool = False) -> None:
            async with host.aturn(_Context(key)) as session:
                if first:
                    await release.wait()  # streaming tokens
                await session.checkpoint([*(session.state or []), text])

        first = asyncio.create_task(call("long", first=True))
        await _until(lambda: host.begins == 2 and host._held[K].busy)
        queued = [asyncio.create_task(call(f"q{i}")) for i in range(8)]
        await _until(lambda: host.begins == 10)  # all waiting, each holding a thread
        await asyncio.wait_for(call("other", key="k2"), 3)  # another session: served
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *queued), 5)
        assert len(host.peek(K)) == 10
        host.close()

    asyncio.run(main())


# -- 6. a fresh etcd read beats stale hints --------------------------------------------------


def test_a_direct_etcd_read_wins_over_a_stale_release_hint(world: World) -> None:
    a, c = world.host("A"), world.host("C")
    turn(a, K, "t1")
    # A move A -> T committed at epoch 3; A was released to T (its hint: {T, 3}).
    world.overrides.swap(K, None, Override("T", 3))
    a.release(K, 3, "T")
    # T dies: its override goes with its lease; C takes K over (epoch 1).
    del world.live["T"]
    world.overrides.swap(K, world.overrides.get(K), None)
    turn(c, K, "t2", reason="failover")
    # A plain call reaches A: the read shows C (alive), so A redirects; no take-over.
    with pytest.raises(Refused) as refused:
        a.begin(K)
    assert refused.value.redirect == "C"
    now = world.overrides.get(K)
    assert now is not None and now.owner == "C" and world.stored(K) == ["t1", "t2"]


def test_a_release_to_itself_fences_epochs_but_is_no_ownership_hint(world: World) -> None:
    a = world.host("A")
    turn(a, K, "t1")
    a.release(K, 5, "")  # a rollback told A epoch 5
    assert K not in a._hints
    with pytest.raises(Refused) as refused:
        a.export(K, 4)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert not a.is_frozen(K)


# -- 8. idle eviction -------------------------------------------------------------------------


def test_idle_sessions_are_evicted_after_the_ttl_busy_and_frozen_ones_stay() -> None:
    now = [1000.0]
    host = SessionHost("A", idle_ttl_s=60.0, clock=lambda: now[0])
    host.attach(InMemorySessionStore())
    for key in ("idle", "busy", "frozen"):
        turn(host, key, "t1")
    host.export("frozen", 1)
    entry = host.begin("busy")
    now[0] += 59.0
    assert host.evict_idle() == 0
    now[0] += 2.0
    turn(host, "fresh", "t1")  # a call begins: the sweep runs by itself
    assert host.keys() == ["busy", "frozen", "fresh"] and host.evictions_total == 1
    host.end("busy", entry)
    turn(host, "idle", "t2")  # an evicted session is taken over from the store
    assert host.peek("idle") == ["t1", "t2"]


def test_the_server_passes_its_idle_ttl_and_checks_it(kind: str) -> None:
    cls = ChatShard if kind == "sync" else AsyncChatShard
    shard = cls(shard_id="s", service="chat", etcd=None, session_idle_ttl_s=30.0)
    assert shard.sessions.idle_ttl_s == 30.0
    with pytest.raises(ConfigError):
        cls(shard_id="s", service="chat", etcd=None, session_idle_ttl_s=0)


# -- a retried turn whose first attempt saves late (a stopped shard that resumes) -----------


def _replayed_reply(refused: Refused) -> bytes | None:
    trailers = dict(refused.trailers)
    assert trailers[metadata.TURN_APPLIED] == "1"
    reply = trailers.get(metadata.TURN_REPLY)
    return None if reply is None else bytes(reply)[1:]


def test_a_retry_that_loses_its_swap_to_the_same_turn_is_answered_from_the_record(
    world: World,
) -> None:
    """A turn's first attempt on A is stopped before its save lands; the client sends it
    again (same turn id) to T, which takes over and runs it; A resumes and its save wins.
    T's save then loses the swap, but the turn was applied once, by A: T answers with
    A's recorded reply (ALREADY_EXISTS), not "ABORTED, retry" (a retry would add the turn
    a second time under a new id)."""
    a, t = world.host("A"), world.host("T")
    turn(a, K, "t1")
    first = a.begin(K)  # attempt 1 runs on A ... and A is stopped before it saves
    second = t.begin(K, "failover")  # attempt 2: T takes over from the store
    a.checkpoint(K, first, ["t1", "t2"], AppliedTurn("c.0x2", b"reply from A"))
    a.end(K, first)  # A resumed: its save landed first
    with pytest.raises(Refused) as refused:
        t.checkpoint(K, second, ["t1", "t2"], AppliedTurn("c.0x2", b"reply from T"))
    t.end(K, second)
    assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert _replayed_reply(refused.value) == b"reply from A"
    assert world.stored(K) == ["t1", "t2"]  # applied once
    assert (t.conflicts_total, t.replayed_total) == (1, 1)
    assert K not in t  # its copy (never saved) is dropped


def test_a_lost_swap_to_another_turn_stays_aborted(world: World) -> None:
    a, t = world.host("A"), world.host("T")
    turn(a, K, "t1")
    first, second = a.begin(K), t.begin(K, "failover")
    a.checkpoint(K, first, ["t1", "t2"], AppliedTurn("c.0x2", b"2"))
    a.end(K, first)
    with pytest.raises(Refused) as refused:  # another turn (or none): not saved, retry
        t.checkpoint(K, second, ["t1", "t3"], AppliedTurn("c.0x3", b"3"))
    t.end(K, second)
    assert refused.value.code is grpc.StatusCode.ABORTED
    assert metadata.TURN_APPLIED not in dict(refused.value.trailers)
    assert world.stored(K) == ["t1", "t2"]
    assert (t.conflicts_total, t.replayed_total) == (1, 0)


# -- a copy held while another shard owns the session is not served again --------------------


class _Snapshots:
    """What the shard's topology source does: each snapshot goes to the host's
    ``topology_changed`` (every snapshot, in order), with the overrides as in etcd."""

    def __init__(self, world: World, *hosts: SessionHost) -> None:
        self.world, self.hosts = world, hosts

    def publish(self) -> None:
        current = {K: o} if (o := self.world.overrides.get(K)) is not None else {}
        topology = Topology("chat", shards=self.world.live, overrides=current)
        for host in self.hosts:
            host.topology_changed(topology)


def test_a_copy_is_forgotten_when_another_shard_takes_the_session_over(world: World) -> None:
    """A holds the session; T takes it over (a spill) and answers a turn; T dies, so its
    override goes with its lease. A's copy must not be served again without T's turn."""
    a, t = world.host("A"), world.host("T")
    snapshots = _Snapshots(world, a, t)
    turn(a, K, "t1")
    turn(t, K, "t2", reason="spill")  # T takes over: override T, a turn saved
    snapshots.publish()  # A's watch delivers T's override
    assert K not in a and a.dropped_elsewhere_total == 1
    world.overrides.swap(K, world.overrides.get(K), None)  # T's lease expired
    snapshots.publish()
    entry = a.begin(K)  # back at A (home again): taken over from the store
    try:
        assert entry.state == ["t1", "t2"]
    finally:
        a.end(K, entry)
    assert a.takeovers_total == 2


def test_a_copy_in_a_turn_is_forgotten_when_the_turn_ends(world: World) -> None:
    a, t = world.host("A"), world.host("T")
    snapshots = _Snapshots(world, a, t)
    turn(a, K, "t1")
    entry = a.begin(K)  # a read-only turn in progress on A ...
    turn(t, K, "t2", reason="spill")  # ... while T takes the session over
    snapshots.publish()
    assert K in a  # not pulled from under the turn
    a.end(K, entry)
    assert K not in a  # but not kept after it


def test_the_own_newer_override_wins_over_an_older_snapshot(world: World) -> None:
    a, t = world.host("A"), world.host("T")
    turn(a, K, "t1")
    turn(t, K, "t2", reason="spill")  # T owns it (override T)
    older = Topology("chat", shards=world.live, overrides={K: world.overrides.get(K)})
    turn(a, K, "t3", reason="spill")  # A takes it back: its own hint is newer
    a.topology_changed(older)  # a snapshot from before A's swap arrives late
    assert K in a
    assert world.stored(K) == ["t1", "t2", "t3"]


def test_a_frozen_copy_is_settled_by_the_snapshot_that_shows_the_move_ended(
    world: World,
) -> None:
    """A move A -> T commits but its release never reaches A: the snapshot that shows
    the commit drops A's frozen copy, so moving the session back to A is not refused
    as 'served here'; a rollback unfreezes it the same way."""
    a, t = world.host("A"), world.host("T")
    snapshots = _Snapshots(world, a, t)
    turn(a, K, "t1")
    fence = world.fence(K, "A", "T")
    data = a.export(K, fence.epoch)
    t.import_state(K, fence.epoch, data)
    committed = world.overrides.swap(K, fence, Override("T", fence.epoch + 1))
    assert committed is not None
    snapshots.publish()
    assert K not in a  # dropped without a call reaching A
    turn(t, K, "t2")
    back = world.fence(K, "T", "A")
    a.import_state(K, back.epoch, t.export(K, back.epoch))  # the move back is taken
    rolled = world.overrides.swap(K, back, Override("T", back.epoch + 1))  # rollback
    assert rolled is not None
    snapshots.publish()
    assert not t.is_frozen(K)  # unfrozen by the snapshot: T serves it again
    turn(t, K, "t3")
    assert world.stored(K) == ["t1", "t2", "t3"]


# -- a malformed override is logged once per session, not on every read ----------------------


def test_a_malformed_override_warns_once_per_session(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.etcd.put(world.overrides.key(K), b'{"owner": "A"}')  # no epoch
    host = world.host("A")
    with caplog.at_level("DEBUG", logger="shardroute.server"):
        turn(host, K, "one")  # a take-over: reads the override, ignores it, serves at home
        for _ in range(3):
            assert host._read_override(K) is None
        assert host._read_override("k2") is None  # no override at all: nothing logged
    logged = [r for r in caplog.records if "is malformed" in r.getMessage()]
    assert [r.levelname for r in logged] == ["WARNING", "DEBUG", "DEBUG", "DEBUG"]
    assert world.stored(K) == ["one"]
    host.close()


# -- a new session placed off its home on purpose gets an override at its first save --------


def test_a_new_session_placed_on_purpose_gets_an_override_and_its_home_redirects(
    world: World,
) -> None:
    """The client spilled a new session from its full home A to T: T's first save writes
    an override naming T, so A redirects the session's next call there instead of taking
    it back from the store (before: A took it over, a move)."""
    a, t = world.host("A"), world.host("T")
    turn(t, K, "t1", reason="spill")
    found = world.overrides.get(K)
    assert found is not None and found.owner == "T"
    with pytest.raises(Refused) as refused:
        a.begin(K)  # the home, reached by a client routing it home (affinity)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.redirect == "T"
    turn(t, K, "t2")  # T serves it on, held, without writing again
    assert world.overrides.get(K) == found
    assert world.stored(K) == ["t1", "t2"]
    assert (a.takeovers_total, t.takeovers_total) == (0, 1)


@pytest.mark.parametrize("reason", ["zone_fallback", "failover", "redirect"])
def test_a_zone_fallback_a_failover_or_a_redirect_places_on_purpose_too(
    world: World, reason: str
) -> None:
    """A redirect a client followed to a new session: a shard over its bound sent it here
    (``shard_bound``, which writes nothing itself)."""
    t = world.host("T")
    turn(t, K, "t1", reason=reason)
    found = world.overrides.get(K)
    assert found is not None and found.owner == "T"


def test_no_override_at_home_or_without_a_save(world: World) -> None:
    """Only a session placed on purpose, and only once its first state is saved: one at
    its home, and calls that saved nothing (a spill, a followed redirect) get none."""
    a, t = world.host("A"), world.host("T")
    turn(a, "at-home", "t1")
    for key, reason in (("unsaved", "spill"), ("unsaved-redirect", "redirect")):
        entry = t.begin(key, reason)  # placed, but the call saves nothing (a read)
        t.end(key, entry)
    keys = ("at-home", "unsaved", "unsaved-redirect")
    assert [world.overrides.get(k) for k in keys] == [None] * 3
    turn(a, K, "t1")
    turn(t, K, "t2", reason="spill")  # a stored session: its take-over writes one, as before
    found = world.overrides.get(K)
    assert found is not None and found.owner == "T"


def test_an_override_another_shard_wrote_meanwhile_stands(world: World) -> None:
    """C took the new session over while T's first turn ran (its override written): T's
    save lands (the store held nothing) but its override does not replace C's."""
    t = world.host("T")
    entry = t.begin(K, "spill")
    try:
        theirs = world.overrides.swap(K, None, Override("C", 1))
        t.checkpoint(K, entry, ["t1"])
    finally:
        t.end(K, entry)
    assert world.overrides.get(K) == theirs


def test_with_etcd_unreachable_the_placed_session_is_saved_without_an_override(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = EtcdClient(EtcdOptions(endpoints=(etcd_server.endpoint,), timeout=1))
    overrides, store = OverrideStore(client, "chat"), InMemorySessionStore()
    t = SessionHost("T", hold_timeout_s=1.0)
    live = {"A": object(), "T": object()}
    t.attach(store, overrides=overrides, topology=lambda: Topology("chat", shards=live))
    try:
        entry = t.begin(K, "spill")  # reads etcd (no override): a new session
        etcd_server.stop()
        with caplog.at_level(logging.WARNING, logger="shardroute.server"):
            t.checkpoint(K, entry, ["t1"])  # saved and answered all the same
        t.end(K, entry)
        assert "no override written for new session" in caplog.text
        stored = store.load(K)
        assert stored is not None and stored.owner == "T"
        etcd_server.start()
        assert overrides.get(K) is None
    finally:
        client.close()


def test_a_new_session_with_a_malformed_override_is_redirected_not_refused(
    world: World,
) -> None:
    """shard_bound on a session whose override is malformed (ignored: a new session): the
    shard over its bound redirects it (it writes nothing, so the bad key cannot make a
    write fail: before, every call was ABORTED), and the shard named serves it."""
    world.etcd.put(world.overrides.key(K), b'{"owner": "A"}')  # no epoch
    a = SessionHost("A", hold_timeout_s=1.0)
    a.attach(world.store, overrides=world.overrides, topology=world.topology, admit=_to_t)
    with pytest.raises(Refused) as refused:
        a.begin(K)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.redirect == "T"
    turn(world.host("T"), K, "t1", reason="redirect")  # not sent on: served there
    assert world.stored(K) == ["t1"]


def _to_t(session_key: str, topology: Topology) -> str:
    return "T"  # an Admission that always finds its shard over the bound


def test_a_placed_sessions_override_waits_for_no_slow_etcd_past_the_deadline(
    world: World,
) -> None:
    """The override of a placed session costs etcd calls after the save: with less than
    one etcd call's timeout (5 s) left before the call's deadline it is put off, and the
    session's next save writes it."""
    t = world.host("T")
    for text, seconds, written in (("t1", 3.0, False), ("t2", 30.0, True)):
        entry = t.begin(K, "spill")
        try:
            t.checkpoint(
                K, entry, [*(entry.state or []), text], deadline=time.monotonic() + seconds
            )
        finally:
            t.end(K, entry)
        found = world.overrides.get(K)
        assert (found is not None and found.owner == "T") is written
    assert world.stored(K) == ["t1", "t2"]


def test_a_take_over_blocked_by_a_malformed_override_says_so(world: World) -> None:
    """A malformed override cannot be compare-and-swapped: a shard that must take over a
    session whose state names another shard refuses with a message naming the key to
    fix (before: ABORTED "changed owner ... retry", forever)."""
    world.etcd.put(world.overrides.key(K), b'{"owner": "A"}')  # no epoch
    turn(world.host("T"), K, "t1", reason="spill")  # new: served (its claim cannot land)
    with pytest.raises(Refused) as refused:
        world.host("A").begin(K)  # its home: a take-over from T
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "malformed" in refused.value.details and "nothing was executed" in refused.value.details
    assert world.stored(K) == ["t1"]


@pytest.mark.parametrize("regranted", [False, True])
def test_a_placed_sessions_override_waits_for_a_live_lease(world: World, regranted: bool) -> None:
    """A shard whose lease is not confirmed live at the save (etcd unreachable a while,
    a pause) puts a placed session's override off instead of writing it with no lease,
    which would outlive the shard. Once the lease is live again the next save writes it
    on the lease; also when the shard registered again under a new lease meanwhile,
    which drops the held copy (the next call placed here takes it from the store and
    claims it then: before, the claim was lost)."""
    lease = world.etcd.grant_lease(30)
    live: list[int | None] = [lease]
    t = world.host("T", lease=lambda: live[0])
    entry = t.begin(K, "spill")
    live[0] = None  # the lease's last confirmation is now too old
    try:
        t.checkpoint(K, entry, ["t1"])
    finally:
        t.end(K, entry)
    assert world.stored(K) == ["t1"] and world.overrides.get(K) is None
    live[0] = lease = world.etcd.grant_lease(30) if regranted else lease
    turn(t, K, "t2", reason="spill")
    found = world.overrides.get(K)
    assert found is not None and found.owner == "T"
    world.etcd.revoke_lease(lease)
    assert world.overrides.get(K) is None and world.stored(K) == ["t1", "t2"]


def test_no_override_is_written_without_a_live_lease(world: World) -> None:
    """A take-over, or a reclaim of an abandoned fence, while the lease given to the
    host is not confirmed live refuses (nothing executed, retry) instead of writing an
    override without a lease, which would outlive the shard (before: written with none)."""
    turn(world.host("A"), K, "t1")  # stored by A, no override
    t = world.host("T", hold=0.2, lease=lambda: None)
    with pytest.raises(Refused) as refused:
        t.begin(K, "spill")  # a take-over from A
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert "nothing was executed" in refused.value.details
    assert world.overrides.get(K) is None and world.stored(K) == ["t1"]
    # A reclaim: T held the session, a mover fenced and exported it, then died.
    lease: list[int | None] = [world.etcd.grant_lease(30)]
    t = world.host("T", hold=0.2, lease=lambda: lease[0])
    turn(t, "k2", "t1", reason="spill")
    fence = world.fence("k2", "T", "C")
    t.export("k2", fence.epoch)
    lease[0] = None
    with pytest.raises(Refused) as refused:
        t.begin("k2")  # held 0.2 s, then the reclaim finds no live lease
    assert refused.value.code is grpc.StatusCode.ABORTED and "lease" in refused.value.details
    assert refused.value.details.endswith("nothing was executed; retry")
    assert world.overrides.get("k2") == fence and world.stored("k2") == ["t1"]
