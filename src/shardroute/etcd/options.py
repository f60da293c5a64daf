"""How to reach etcd: :class:`EtcdOptions`, the one settings object every component that
talks to etcd takes (topology source, shard server, session store, mover, CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shardroute._validate import seconds
from shardroute.errors import ConfigError

__all__ = ["EtcdOptions", "parse_endpoint"]


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    """How to reach etcd: endpoints, per-call timeout, TLS and user/password auth.

    ``endpoints`` are ``host:port`` (``http://`` or ``https://`` prefixes accepted), or
    comma-separated lists of them (``"10.0.0.1:2379,10.0.0.2:2379"``): give every
    member of the etcd cluster, and the client fails over between them within each
    call's ``timeout`` (docs/operations.md, "An etcd cluster"). TLS is used when
    ``ca_cert`` is set (paths to PEM files; ``cert_key``/``cert_cert`` for client
    certificates).
    """

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    timeout: float = 5.0
    ca_cert: str | None = None
    cert_key: str | None = None
    cert_cert: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr or a log
    retry_failed_endpoint_s: float = 1.0

    def __post_init__(self) -> None:
        given = (self.endpoints,) if isinstance(self.endpoints, str) else self.endpoints
        # Each may be a comma-separated list ("a:2379,b:2379", as --etcd takes them).
        split = tuple(part.strip() for text in given for part in text.split(",") if part.strip())
        object.__setattr__(self, "endpoints", split)
        if not self.endpoints:
            raise ConfigError("at least one etcd endpoint is required")
        for endpoint in self.endpoints:
            parse_endpoint(endpoint)
        seconds("etcd timeout", self.timeout)
        seconds("retry_failed_endpoint_s", self.retry_failed_endpoint_s, zero=True)
        if (self.user is None) != (self.password is None):
            raise ConfigError("etcd user and password must be given together")
        if (self.cert_key is None) != (self.cert_cert is None):
            raise ConfigError("cert_key and cert_cert must be given together")
        if self.cert_key is not None and self.ca_cert is None:
            raise ConfigError("client certificates need ca_cert as well")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``host:port`` (optionally with an http(s):// scheme) or raise ConfigError."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid etcd endpoint {endpoint!r}: expected host:port")
    return host.strip("[]"), int(port)


def etcd_options(etcd: EtcdOptions | str | Sequence[str], **fields: object) -> EtcdOptions:
    """``etcd`` as :class:`EtcdOptions`: options are used as they are (then ``fields``
    must be empty), endpoints (one or several ``host:port``) get ``fields``."""
    if isinstance(etcd, EtcdOptions):
        if any(value is not None for value in fields.values()):
            raise ConfigError("pass etcd settings either as EtcdOptions or as arguments, not both")
        return etcd
    endpoints = (etcd,) if isinstance(etcd, str) else tuple(etcd)
    given = {name: value for name, value in fields.items() if value is not None}
    return EtcdOptions(endpoints, **given)  # type: ignore[arg-type]
