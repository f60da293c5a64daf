"""A shard server's configuration (:class:`ServerConfig`, validated, no I/O) and the
names of the services every shard serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc

from shardroute._listen import host_port
from shardroute._validate import seconds
from shardroute.discovery.keys import KeySchema
from shardroute.discovery.records import MAX_CAPACITY, MAX_WEIGHT
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdOptions
from shardroute.model import EMPTY_MAPPING, Shard, ShardState
from shardroute.security import ChannelSecurity, ControlAuth, ServerSecurity, TLSConfig

__all__ = [
    "CONTROL_SERVICE",
    "DEFAULT_ETCD_TIMEOUT_S",
    "DEFAULT_LEASE_TTL_S",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HEALTH_SERVICE",
    "PING_POLICY",
    "ServerConfig",
]

CONTROL_SERVICE = "shardroute.v1.ShardControl"
HEALTH_SERVICE = "grpc.health.v1.Health"

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_LEASE_TTL_S = 10
"""The shard lease's default TTL: a shard killed outright leaves every topology within it."""
DEFAULT_ETCD_TIMEOUT_S = 5.0
"""The default per-call etcd timeout (at most half the lease TTL)."""
PING_POLICY: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 200),
    ("grpc.http2.max_ping_strikes", 0),
)
"""Server arguments that accept the clients' keepalive pings (one a second, also on idle
connections: ``transport.channels.KEEPALIVE_OPTIONS``) instead of answering them with
GOAWAY ``too_many_pings``. A gRPC server of your own that shardroute clients call (not a
``ShardServer``) needs them too."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a shard server is configured with; validated, no I/O.

    See :class:`~shardroute.server.ShardServer` for the meaning of each field.
    """

    shard_id: str
    service: str
    etcd: tuple[str, ...] | None
    host: str = "127.0.0.1"
    port: int = 0
    advertise_address: str | None = None
    zone: str = ""
    region: str = ""
    weight: float = 1.0
    capacity: int = 64
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAPPING)
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S
    drain_grace_s: float = 10.0
    max_workers: int | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    etcd_timeout_s: float | None = None
    """None: ``min(5.0, lease_ttl_s / 2)``."""
    etcd_ca_cert: str | None = None
    etcd_cert_key: str | None = None
    etcd_cert_cert: str | None = None
    etcd_user: str | None = None
    etcd_password: str | None = field(default=None, repr=False)  # never in a repr or a log
    wait_for_etcd: bool = False
    tls: ServerSecurity = None
    peer_tls: ChannelSecurity = None
    control_auth: ControlAuth | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tls, TLSConfig | grpc.ServerCredentials | None):
            raise ConfigError(
                f"tls must be a TLSConfig or grpc.ServerCredentials, got {self.tls!r}"
            )
        if isinstance(self.tls, TLSConfig) and (self.tls.cert is None or self.tls.key is None):
            raise ConfigError("a TLS shard server needs TLSConfig(cert=..., key=...)")
        if self.peer_tls is None and isinstance(self.tls, TLSConfig):
            object.__setattr__(self, "peer_tls", self.tls)  # its certificate as a client's
        if not isinstance(self.control_auth, ControlAuth | None):
            raise ConfigError(f"control_auth must be a ControlAuth, got {self.control_auth!r}")
        schema = KeySchema(self.service)
        schema.shard(self.shard_id)  # validates the id
        if isinstance(self.etcd, str):
            object.__setattr__(self, "etcd", (self.etcd,))
        elif self.etcd is not None:
            object.__setattr__(self, "etcd", tuple(self.etcd))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port!r}")
        if not 0 < self.weight <= MAX_WEIGHT:
            raise ConfigError(f"weight must be > 0 and <= {MAX_WEIGHT}, got {self.weight!r}")
        if not 0 < self.capacity <= MAX_CAPACITY:
            raise ConfigError(f"capacity must be in 1..{MAX_CAPACITY}, got {self.capacity!r}")
        if self.lease_ttl_s < 2:
            raise ConfigError(f"lease_ttl_s must be >= 2 (etcd's minimum), got {self.lease_ttl_s}")
        if self.etcd_timeout_s is None:
            object.__setattr__(
                self, "etcd_timeout_s", min(DEFAULT_ETCD_TIMEOUT_S, self.lease_ttl_s / 2)
            )
        elif seconds("etcd_timeout_s", self.etcd_timeout_s) > self.lease_ttl_s / 2:
            raise ConfigError(
                f"etcd_timeout_s ({self.etcd_timeout_s}) must be at most half of lease_ttl_s "
                f"({self.lease_ttl_s}): one slow etcd call must not cost the shard its lease "
                "(and every session override under it). Raise lease_ttl_s or lower "
                "etcd_timeout_s (docs/server.md, 'Lease and etcd timeouts')"
            )
        seconds("drain_grace_s", self.drain_grace_s, zero=True)
        if self.max_workers is not None and self.max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {self.max_workers!r}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.advertise_address is not None:
            host, sep, port = self.advertise_address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"advertise_address must be 'host:port', got {self.advertise_address!r}"
                )
        if self.etcd is not None:
            # Validates endpoints, TLS and auth together; splits comma-separated lists.
            object.__setattr__(self, "etcd", self.etcd_options().endpoints)

    @property
    def schema(self) -> KeySchema:
        """The service's etcd key schema."""
        return KeySchema(self.service)

    @property
    def workers(self) -> int:
        """Worker threads of the sync server: ``max_workers`` or capacity + 8 (control,
        health and a little headroom), so ``capacity`` user calls run at once."""
        return self.max_workers if self.max_workers is not None else self.capacity + 8

    @property
    def etcd_timeout(self) -> float:
        """The per-call etcd timeout in seconds (``etcd_timeout_s`` or its default)."""
        timeout = self.etcd_timeout_s
        assert timeout is not None  # set by __post_init__
        return timeout

    @property
    def keepalive_interval_s(self) -> float:
        """How often the lease is kept alive: a quarter of its TTL."""
        return self.lease_ttl_s / 4

    @property
    def keepalive_timeout_s(self) -> float:
        """The timeout of a keep-alive call: the etcd timeout, at most a third of the
        TTL, so a keep-alive that hangs is retried before the lease can expire (interval
        + 2 * timeout < TTL)."""
        return min(self.etcd_timeout, self.lease_ttl_s / 3)

    def etcd_options(self, *, keepalive: bool = False) -> EtcdOptions:
        """The :class:`EtcdOptions` to register with (``etcd`` must not be None);
        ``keepalive``: with the keep-alive calls' shorter timeout."""
        if self.etcd is None:
            raise ConfigError("this shard server has no etcd endpoints (standalone)")
        return EtcdOptions(
            endpoints=self.etcd,
            timeout=self.keepalive_timeout_s if keepalive else self.etcd_timeout,
            ca_cert=self.etcd_ca_cert,
            cert_key=self.etcd_cert_key,
            cert_cert=self.etcd_cert_cert,
            user=self.etcd_user,
            password=self.etcd_password,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        """Channel arguments of the gRPC server: message sizes, and the HTTP/2 pings
        clients send to notice a stopped shard (``transport.channels.KEEPALIVE_OPTIONS``)
        are permitted, even on an idle connection, never answered with GOAWAY
        ``too_many_pings``."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *PING_POLICY,
        ]

    def listen(self, server: Any) -> int:
        """Add the listening port to ``server`` (a ``grpc.Server`` or ``grpc.aio.Server``):
        TLS when :attr:`tls` is set. Returns the bound port; raises RuntimeError when the
        address cannot be bound."""
        address = host_port(self.host, self.port)  # an IPv6 host in brackets
        if self.tls is None:
            port: int = server.add_insecure_port(address)
            return port
        credentials = self.tls.server_credentials() if isinstance(self.tls, TLSConfig) else self.tls
        port = server.add_secure_port(address, credentials)
        return port

    @property
    def loopback_only(self) -> bool:
        """Whether the server listens on loopback addresses only."""
        return self.host in ("127.0.0.1", "localhost", "::1", "[::1]") or self.host.startswith(
            "127."
        )

    def advertised(self, bound_port: int) -> str:
        """The address written in the shard record once the server is bound."""
        if self.advertise_address is not None:
            return self.advertise_address
        host = self.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return host_port(host, bound_port)

    def shard(self, address: str, state: ShardState) -> Shard:
        """The shard record for ``shards/<id>``."""
        return Shard(
            id=self.shard_id,
            address=address,
            zone=self.zone,
            region=self.region,
            weight=self.weight,
            capacity=self.capacity,
            state=state,
            labels=self.labels,
            tls=self.tls is not None,
        )
