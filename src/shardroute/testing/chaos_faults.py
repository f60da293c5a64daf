"""More chaos faults (:mod:`shardroute.testing.chaos` exports them): an etcd member lost
in a cluster, a network partition between the client and a shard, a slow shard.

The network faults act on a :class:`~shardroute.testing.faults.TcpProxy` in front of
the shard: start such shards with :func:`add_proxied_shards` (the shard advertises the
proxy's address, so every client and mover reaches it through the proxy, while its own
link to etcd stays up: it stays registered) and list them in ``ChaosEnv.proxies``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from shardroute.errors import ConfigError, ShardStartError
from shardroute.testing.etcd import free_port
from shardroute.testing.faults import TcpProxy
from shardroute.testing.waiting import wait_until

if TYPE_CHECKING:
    from shardroute.testing.chaos import ChaosEnv
    from shardroute.testing.cluster import ShardCluster
    from shardroute.testing.etcd_cluster import EtcdCluster, EtcdMember

__all__ = [
    "EtcdLeaderLoss",
    "EtcdMemberLoss",
    "Partition",
    "SlowShard",
    "add_proxied_shards",
]


def add_proxied_shards(cluster: ShardCluster, count: int, **kwargs: Any) -> dict[str, TcpProxy]:
    """Start ``count`` more shards of ``cluster``, each behind a new, started
    :class:`TcpProxy` (its address in etcd is the proxy's); returns ``shard id → proxy``
    (close them after the cluster). ``kwargs`` as for :meth:`ShardCluster.add`.

    Each shard listens on a port picked for it beforehand (the proxy needs it), which
    another socket of the machine can take during the shard's start-up (seen once in
    CI): such a start is tried again on another port, up to three times."""
    proxies: dict[str, TcpProxy] = {}
    try:
        for _ in range(count):
            shard_id, proxy = _add_proxied(cluster, kwargs)
            proxies[shard_id] = proxy
    except BaseException:
        for proxy in proxies.values():
            proxy.close()
        raise
    return proxies


def _add_proxied(cluster: ShardCluster, kwargs: dict[str, Any]) -> tuple[str, TcpProxy]:
    for attempt in range(3):
        port = free_port()
        proxy = TcpProxy(f"127.0.0.1:{port}").start()
        try:
            shard_id = cluster.add(port=port, advertise_address=proxy.endpoint, **kwargs)
        except ShardStartError as exc:
            proxy.close()
            if attempt == 2 or "cannot listen" not in str(exc):
                raise
            continue
        return shard_id, proxy
    raise AssertionError("unreachable")  # pragma: no cover


def _etcd_cluster(env: ChaosEnv) -> EtcdCluster:
    if env.etcd_cluster is None:
        raise ConfigError("this fault needs an etcd cluster: ChaosEnv(etcd_cluster=...)")
    return env.etcd_cluster


def _proxy(env: ChaosEnv, target: str) -> TcpProxy:
    proxy = env.proxies.get(target)
    if proxy is None:
        raise ConfigError(
            f"shard {target!r} has no proxy in front of it: start it with "
            "add_proxied_shard() and list it in ChaosEnv.proxies"
        )
    return proxy


def _following(env: ChaosEnv) -> None:
    wait_until(lambda: env.client.source.staleness() == 0.0, 30, "the client following etcd")


@dataclass
class EtcdMemberLoss:
    """SIGKILL one member of a 3-member (or larger) etcd cluster: a follower, or the
    leader (then the others elect a new one); heal: start it again with its data and
    wait until the cluster has a leader and the client follows etcd."""

    role: Literal["leader", "follower"] = "follower"
    hold_s: float = 3.0
    name: str = "etcd_follower_loss"
    on_shard: ClassVar[bool] = False
    killed: EtcdMember | None = None
    """The member the last :meth:`apply` killed."""

    def apply(self, env: ChaosEnv, target: str) -> None:
        cluster = _etcd_cluster(env)
        leader = cluster.leader()
        member = leader if self.role == "leader" else cluster.followers()[0]
        self.killed = member
        cluster.kill(member)

    def heal(self, env: ChaosEnv, target: str) -> None:
        cluster = _etcd_cluster(env)
        if self.killed is not None:
            cluster.restart(self.killed)
        cluster.wait_for_leader(30)
        _following(env)


@dataclass
class EtcdLeaderLoss(EtcdMemberLoss):
    """SIGKILL the etcd cluster's leader (the others elect a new one); heal: start it
    again as a follower."""

    role: Literal["leader", "follower"] = "leader"
    name: str = "etcd_leader_loss"


@dataclass(frozen=True)
class Partition:
    """Cut the network between the client and the shard: its proxy drops every byte
    (``mode="blackhole"``: silence, noticed by deadlines and keepalive) or resets every
    connection (``mode="reset"``: refused at once). The shard keeps its etcd lease, so it
    stays in the topology: only the client's own detection avoids it. Heal: the link is
    restored (black-holed connections are reset, so clients reconnect)."""

    mode: Literal["blackhole", "reset"] = "blackhole"
    hold_s: float = 4.0
    name: str = "partition"
    on_shard: ClassVar[bool] = True

    def apply(self, env: ChaosEnv, target: str) -> None:
        proxy = _proxy(env, target)
        if self.mode == "blackhole":
            proxy.blackhole()
        else:
            proxy.cut()

    def heal(self, env: ChaosEnv, target: str) -> None:
        _proxy(env, target).restore()


@dataclass(frozen=True)
class SlowShard:
    """The shard answers ``delay_s`` late: its proxy delays every chunk of bytes that
    much in each direction. Heal: no delay."""

    delay_s: float = 0.2
    hold_s: float = 3.0
    name: str = "slow_shard"
    on_shard: ClassVar[bool] = True

    def apply(self, env: ChaosEnv, target: str) -> None:
        _proxy(env, target).set_latency(self.delay_s)

    def heal(self, env: ChaosEnv, target: str) -> None:
        _proxy(env, target).set_latency(0.0)
