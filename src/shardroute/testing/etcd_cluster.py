"""A real etcd cluster (3 members by default) on free loopback ports, for tests of
what production etcd does: a leader lost, a follower lost, a member back.

:class:`EtcdCluster` starts :class:`EtcdMember` processes (each an
:class:`~shardroute.testing.etcd.EtcdServer` that joins the others through
``--initial-cluster``); the ``etcd_cluster`` pytest fixture wraps it (docs/testing.md).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Self

from shardroute.errors import ConfigError, EtcdUnavailable
from shardroute.testing.etcd import (
    DEFAULT_AUTO_COMPACTION,
    DEFAULT_QUOTA_BACKEND_BYTES,
    EtcdServer,
    find_etcd_binary,
)

if TYPE_CHECKING:
    from shardroute.etcd import EtcdClient

__all__ = ["EtcdCluster", "EtcdMember"]


class EtcdMember(EtcdServer):
    """One member of an :class:`EtcdCluster` (an :class:`EtcdServer` that joins the
    others); ``stop()``, ``kill()`` and ``start()`` act on this member alone."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        # Written with fsync, unlike a lone test etcd: the faults that stop or kill
        # members lost acknowledged writes without it (a cluster restarted with its
        # revision ~500 behind, every conversation missing its last turns), which is
        # etcd's documented risk of --unsafe-no-fsync, not the library's to survive.
        kwargs["extra_args"] = (*kwargs.get("extra_args", ()), "--unsafe-no-fsync=false")
        super().__init__(**kwargs)
        self.name = name
        self.initial_cluster = ""
        """``name=peer-url,...`` of every member: set by the cluster before start."""
        self.member_id = 0
        """etcd's id of this member (known once the cluster started)."""

    @property
    def peer_url(self) -> str:
        """``http://127.0.0.1:<peer port>``: where the other members reach it."""
        return f"http://127.0.0.1:{self.peer_port}"

    def _cluster_args(self, peer: str) -> list[str]:
        # Ignored by etcd on a restart: the data directory already names the cluster.
        return [
            f"--name={self.name}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=shardroute-test-cluster",
        ]


class EtcdCluster:
    """A real etcd cluster of ``size`` members (3 by default) on free loopback ports,
    data in temporary directories.

    ``start()`` launches every member at once and returns when each is healthy (a
    leader was elected). ``leader()`` / ``followers()`` say who is who (asked of etcd);
    ``kill(member)``, ``stop(member)`` and ``restart(member)`` act on one member (same
    ports, same data); ``wait_for_leader()`` returns once the live members elected one.
    ``endpoints`` gives every member's ``host:port`` for :class:`EtcdOptions`
    (``client()`` is an :class:`~shardroute.etcd.EtcdClient` on all of them).
    ``close()`` kills every member and removes the data. Usable as a context manager.
    Not thread-safe: drive it from one thread.

    ``member_args``: extra etcd flags for every member (e.g. a shorter
    ``--election-timeout``); the rest as for :class:`EtcdServer`.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        binary: str | None = None,
        start_timeout: float = 30.0,
        member_args: tuple[str, ...] = (),
        auto_compaction: tuple[str, str] | None = DEFAULT_AUTO_COMPACTION,
        quota_backend_bytes: int | None = DEFAULT_QUOTA_BACKEND_BYTES,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"an etcd cluster needs at least one member, got size={size!r}")
        binary = binary or find_etcd_binary()
        self.members = [
            EtcdMember(
                f"member-{i}",
                binary=binary,
                start_timeout=start_timeout,
                extra_args=member_args,
                auto_compaction=auto_compaction,
                quota_backend_bytes=quota_backend_bytes,
            )
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial
        self.start_timeout = start_timeout

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every member's ``127.0.0.1:<port>``, in member order."""
        return tuple(m.endpoint for m in self.members)

    @property
    def running(self) -> list[EtcdMember]:
        """The members whose process runs."""
        return [m for m in self.members if m.running]

    def start(self) -> Self:
        """Start every member that is not running; return once each is healthy."""
        stopped = [m for m in self.members if not m.running]
        for member in stopped:
            member._launch()
        for member in stopped:
            member._wait_healthy()
        for member in self.members:
            if not member.member_id:
                client = member.client()
                try:
                    member.member_id = client.status().member_id
                finally:
                    client.close()
        return self

    def client(self, timeout: float = 5.0) -> EtcdClient:
        """A new :class:`~shardroute.etcd.EtcdClient` on every member; the caller closes it."""
        from shardroute.etcd import EtcdClient, EtcdOptions

        return EtcdClient(EtcdOptions(self.endpoints, timeout=timeout))

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The current leader, as the live members see it (waits up to ``timeout`` for
        them to agree on a live one)."""
        return self.wait_for_leader(timeout)

    def followers(self, timeout: float = 10.0) -> list[EtcdMember]:
        """The live members other than the leader."""
        leader = self.leader(timeout)
        return [m for m in self.running if m is not leader]

    def wait_for_leader(self, timeout: float = 10.0) -> EtcdMember:
        """Block until every live member names the same live leader; return it."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            leader = self._agreed_leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise EtcdUnavailable(
                    f"the etcd cluster's live members agreed on no live leader in {timeout}s"
                )
            time.sleep(delay)  # polling child processes; nothing to wait on
            delay = min(delay * 2, 0.2)

    def _agreed_leader(self) -> EtcdMember | None:
        by_id = {m.member_id: m for m in self.running}
        seen: set[int] = set()
        for member in self.running:
            client = member.client(timeout=1.0)
            try:
                seen.add(client.status().leader)
            except EtcdUnavailable:
                return None
            finally:
                client.close()
        if len(seen) != 1:
            return None
        return by_id.get(seen.pop())

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL one member (its data stays)."""
        member.kill()

    def stop(self, member: EtcdMember) -> None:
        """SIGTERM one member (its data stays)."""
        member.stop()

    def restart(self, member: EtcdMember) -> EtcdMember:
        """Start a stopped or killed member again (same ports, same data) and wait until
        it is healthy (it rejoins and catches up)."""
        member.stop()
        member.start()
        return member

    def close(self) -> None:
        """Kill every member and remove its data. Idempotent."""
        for member in self.members:
            member.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:  # e.g. a member that never became healthy: leave none running
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
