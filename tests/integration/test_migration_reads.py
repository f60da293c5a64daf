"""Fewer sequential reads in a move (issue 15, session 6): the mover fences from the
override it already knows (its own last commit, or a topology that follows overrides)
instead of reading etcd first, and reads again when that view is behind; the target
reads the store's version beside the import's fence check. Real etcd; real chat shards
in this process where a move runs end to end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chat_calls import history, turn

from shardroute import ShardClient
from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import Refused, SessionStoreUnavailable
from shardroute.etcd import EtcdClient
from shardroute.examples.chat import ChatShard
from shardroute.model import Override, Topology
from shardroute.server import SessionHost
from shardroute.sessions import EtcdSessionStore, Migrator, OverrideStore
from shardroute.testing.waiting import wait_until

K = "conv-reads"

# -- the mover: fence from what it knows, read again when that is behind ----------------


class _CountedOverrides(OverrideStore):
    """An override store that counts its reads."""

    def __init__(self, inner: OverrideStore) -> None:
        self._inner = inner
        self.reads = 0

    def get(self, session_key: str) -> Override | None:
        self.reads += 1
        return self._inner.get(session_key)

    def swap(self, *args: Any, **kwargs: Any) -> Override | None:
        return self._inner.swap(*args, **kwargs)


def _counted(mover: Migrator) -> _CountedOverrides:
    counted = _CountedOverrides(mover.overrides)
    mover.overrides = counted
    return counted


Pair = tuple[ChatShard, ChatShard, ShardClient, EtcdTopologySource]


@pytest.fixture
def pair(etcd_endpoint: str) -> Iterator[Pair]:
    common: dict[str, Any] = {"service": "chat", "etcd": etcd_endpoint, "token_delay_s": 0}
    with ChatShard(shard_id="a", **common) as a, ChatShard(shard_id="b", **common) as b:
        source = EtcdTopologySource(etcd_endpoint, "chat", include_sessions=True)
        source.start()
        try:
            source.wait_for(lambda t: {"a", "b"} <= set(t.shards), 10)
            for shard in (a, b):
                source.wait_for(lambda _t, s=shard: {"a", "b"} <= set(s.topology.shards), 10)
            with ShardClient(source) as client:
                yield a, b, client, source
        finally:
            source.close()


def _mover(source: EtcdTopologySource) -> Migrator:
    return Migrator(EtcdClient(source.options), "chat", source, close_etcd=True)


def _plain_source(etcd_endpoint: str) -> EtcdTopologySource:
    source = EtcdTopologySource(etcd_endpoint, "chat")  # overrides not followed
    source.start()
    return source


def _other(shard: str) -> str:
    return "b" if shard == "a" else "a"


def test_a_movers_next_move_of_a_session_fences_from_its_own_commit(
    pair: Pair, etcd_endpoint: str, etcd: EtcdClient
) -> None:
    _, _, client, _ = pair
    here = turn(client, K, "t1").shard_id
    plain = _plain_source(etcd_endpoint)
    try:
        with _mover(plain) as mover:
            reads = _counted(mover)
            first = mover.migrate(K, target=_other(here))
            assert reads.reads == 1  # nothing known yet: read etcd
            second = mover.migrate(K, target=here)
            third = mover.migrate(K, target=_other(here))
    finally:
        plain.close()
    assert reads.reads == 1  # the later moves fenced from the mover's own commits
    assert (second.source, second.target) == (first.target, here)
    assert third.epoch == second.epoch + 2 == first.epoch + 4
    stored = OverrideStore(etcd, "chat").get(K)
    assert stored is not None and (stored.owner, stored.epoch) == (third.target, third.epoch)
    turn(client, K, "t2")
    assert history(client, K) == ["t1", "t2"]


def test_a_commit_the_mover_remembers_that_is_behind_is_read_again(
    pair: Pair, etcd_endpoint: str
) -> None:
    """Mover 1 remembers its commit; mover 2 moves the session on. Mover 1's next move
    fences from the stale commit: the swap fails (nothing written), it reads etcd and
    moves the session from where it really is."""
    _, _, client, _ = pair
    home = turn(client, K, "t1").shard_id
    plain = _plain_source(etcd_endpoint)
    try:
        with _mover(plain) as one, _mover(plain) as two:
            reads = _counted(one)
            one.migrate(K, target=_other(home))  # one remembers {other, e}
            one.wait_released(K)  # (a release in flight would keep home's frozen copy)
            two.migrate(K, target=home)  # now {home, e + 2}: one's memory is behind
            # (one would take the session to be on the target already: it reads instead)
            two.wait_released(K)  # the old source has dropped its frozen copy
            turn(client, K, "t2")
            again = one.migrate(K, target=_other(home))
    finally:
        plain.close()
    assert reads.reads == 2  # the first move's read, and the read after the stale fence
    assert (again.source, again.target) == (home, _other(home))
    turn(client, K, "t3")
    assert history(client, K) == ["t1", "t2", "t3"]
    assert client.route(K).shard.id == _other(home)


def test_a_topology_that_follows_overrides_saves_the_read(pair: Pair) -> None:
    """A mover on a source that follows overrides (a client's ``follow_overrides``, a
    shard's own) fences from the override its watch shows, with no read of etcd."""
    _, _, client, source = pair
    home = turn(client, K, "t1").shard_id
    with _mover(source) as first:
        moved = first.migrate(K, target=_other(home))
    source.wait_for(lambda t: _committed_in(t, moved.target, moved.epoch), 10)
    with _mover(source) as fresh:  # remembers nothing
        reads = _counted(fresh)
        back = fresh.migrate(K, target=home)
    assert reads.reads == 0
    assert (back.source, back.target, back.epoch) == (moved.target, home, moved.epoch + 2)
    turn(client, K, "t2")
    assert history(client, K) == ["t1", "t2"]


def _committed_in(topology: Topology, owner: str, epoch: int) -> bool:
    found = topology.overrides.get(K)
    return found is not None and (found.owner, found.epoch, found.moving_to) == (owner, epoch, "")


def test_a_followed_view_that_shows_a_move_in_progress_is_not_trusted(
    etcd_endpoint: str, etcd: EtcdClient
) -> None:
    """An override with ``moving_to`` in the view is confirmed by a read (the move may
    have ended); one without a version (not from etcd) is not used either."""
    written = OverrideStore(etcd, "chat").swap(K, None, Override("a", 1))
    assert written is not None
    source = _plain_source(etcd_endpoint)
    try:
        with _mover(source) as mover:
            moving = Override("a", 1, "b", written.version)
            assert mover._known.take(K, Topology("chat", overrides={K: moving})) is None
            unversioned = Override("a", 1)
            assert mover._known.take(K, Topology("chat", overrides={K: unversioned})) is None
            assert mover._known.take(K, Topology("chat", overrides={K: written})) == written
    finally:
        source.close()


# -- the target: the fence check and the store's version, read at the same time --------


class _Overlap:
    """Makes the fence check wait until the version read has started: the two only
    both finish when they run at the same time."""

    def __init__(self) -> None:
        self.version_started = threading.Event()
        self.overlapped = False


class _WaitingOverrides(OverrideStore):
    def __init__(self, etcd: EtcdClient, overlap: _Overlap) -> None:
        super().__init__(etcd, "chat")
        self._overlap = overlap

    def get(self, session_key: str) -> Override | None:
        self._overlap.overlapped = self._overlap.version_started.wait(5)
        return super().get(session_key)


class _SignallingStore(EtcdSessionStore):
    def __init__(self, etcd: EtcdClient, overlap: _Overlap, *, down: bool = False) -> None:
        super().__init__(etcd, "chat")
        self._overlap = overlap
        self.down = down

    def version(self, session_key: str) -> int:
        self._overlap.version_started.set()
        if self.down:
            raise SessionStoreUnavailable("the store is down (test)")
        return super().version(session_key)


def _host(etcd: EtcdClient, overlap: _Overlap, *, down: bool = False) -> SessionHost:
    host = SessionHost("T")
    overrides = _WaitingOverrides(etcd, overlap)
    store = _SignallingStore(etcd, overlap, down=down)
    host.attach(store, overrides=overrides, topology=lambda: Topology("chat"))
    return host


def _saved(etcd: EtcdClient) -> int:
    return EtcdSessionStore(etcd, "chat").save(K, b'[["t1","x"]]', owner="A", expected_version=0)


def test_the_import_reads_the_store_version_beside_its_fence_check(etcd: EtcdClient) -> None:
    version = _saved(etcd)
    fence = OverrideStore(etcd, "chat").swap(K, None, Override("A", 7, "T"))
    assert fence is not None
    overlap = _Overlap()
    host = _host(etcd, overlap)
    try:
        assert host.check_import(K, fence.epoch, version) == version
        assert overlap.overlapped  # the fence check waited for the version read to start
    finally:
        host.close()


def test_a_made_up_fence_is_refused_first_even_when_the_store_is_down(
    etcd: EtcdClient,
) -> None:
    version = _saved(etcd)
    OverrideStore(etcd, "chat").swap(K, None, Override("A", 7))  # no move in progress
    overlap = _Overlap()
    host = _host(etcd, overlap, down=True)
    try:
        with pytest.raises(Refused) as refused:
            host.check_import(K, 8, version)
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "not a move that this call belongs to" in refused.value.details
        assert K not in host
    finally:
        host.close()


def test_a_fenced_import_whose_store_is_down_is_unavailable(etcd: EtcdClient) -> None:
    version = _saved(etcd)
    fence = OverrideStore(etcd, "chat").swap(K, None, Override("A", 7, "T"))
    assert fence is not None
    overlap = _Overlap()
    host = _host(etcd, overlap, down=True)
    try:
        with pytest.raises(Refused) as refused:
            host.check_import(K, fence.epoch, version)
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        assert K not in host
    finally:
        host.close()


# -- the fence checks: etcd's read races the shard's own override watch -----------------


class _HeldReads(OverrideStore):
    """Override reads that wait until the test lets them answer (at most 5 s)."""

    def __init__(self, etcd: EtcdClient) -> None:
        super().__init__(etcd, "chat")
        self.answer = threading.Event()
        self.reads = 0

    def get(self, session_key: str) -> Override | None:
        self.reads += 1
        self.answer.wait(5)
        return super().get(session_key)


class _Watch:
    """A shard's topology as its watch has it so far (set by the test)."""

    def __init__(self) -> None:
        self.topology = Topology("chat")

    def __call__(self) -> Topology:
        return self.topology


def _fenced_source(etcd: EtcdClient) -> tuple[SessionHost, _HeldReads, _Watch, Override]:
    """Shard A holding K (one turn), fenced in etcd for a move to T."""
    reads, watch = _HeldReads(etcd), _Watch()
    host = SessionHost("A")
    host.attach(EtcdSessionStore(etcd, "chat"), overrides=reads, topology=watch)
    reads.answer.set()
    entry = host.begin(K, None)
    try:
        host.checkpoint(K, entry, ["t1"])
    finally:
        host.end(K, entry)
    current = OverrideStore(etcd, "chat").get(K)
    fence = OverrideStore(etcd, "chat").swap(K, current, Override("A", 7, "T"))
    assert fence is not None
    reads.answer.clear()
    reads.reads = 0
    return host, reads, watch, fence


def test_a_fence_the_watch_shows_backs_the_export_without_waiting_for_the_read(
    etcd: EtcdClient,
) -> None:
    host, reads, watch, fence = _fenced_source(etcd)
    try:
        watch.topology = Topology("chat", overrides={K: fence})
        host.verify_move(K, fence.epoch, "export")
        assert not reads.answer.is_set()  # answered with the read still held
        assert host.export(K, fence.epoch)
    finally:
        reads.answer.set()
        host.close()


def test_a_fence_the_watch_shows_during_the_read_backs_the_call(etcd: EtcdClient) -> None:
    host, reads, watch, fence = _fenced_source(etcd)
    try:
        checked = threading.Thread(target=host.verify_move, args=(K, fence.epoch, "export"))
        checked.start()
        wait_until(lambda: reads.reads == 1)  # the read is out, held
        watch.topology = Topology("chat", overrides={K: fence})
        host.topology_changed()
        checked.join(5)
        assert not checked.is_alive() and not reads.answer.is_set()
    finally:
        reads.answer.set()
        host.close()


def test_a_watch_that_shows_another_epoch_leaves_it_to_the_read(etcd: EtcdClient) -> None:
    """The watch backs only exactly the fence asked for: a made-up epoch still waits for
    etcd, and etcd refuses it, nothing frozen."""
    host, reads, watch, fence = _fenced_source(etcd)
    try:
        watch.topology = Topology("chat", overrides={K: fence})
        reads.answer.set()
        with pytest.raises(Refused) as refused:
            host.verify_move(K, fence.epoch + 5, "export")
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert reads.reads == 1
        unversioned = Override("A", fence.epoch + 5, "T")  # not from etcd: not trusted
        watch.topology = Topology("chat", overrides={K: unversioned})
        with pytest.raises(Refused):
            host.verify_move(K, fence.epoch + 5, "export")
        assert reads.reads == 2 and not host._held[K].frozen
    finally:
        reads.answer.set()
        host.close()
