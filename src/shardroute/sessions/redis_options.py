"""How to reach Redis: :class:`RedisOptions`, parsed from a URL (pure: no redis import).

URLs (docs/operations.md, "Choosing a session store"):

- ``redis://[user[:password]@]host[:port][/db]``: one server (port 6379, db 0 by default);
- ``rediss://...``: the same over TLS;
- ``redis+cluster://[user[:password]@]host1:port1,host2:port2,...``: a Redis Cluster
  (``rediss+cluster://`` over TLS); the nodes are where discovery starts, any reachable
  one is enough; no ``/db`` (a cluster has only db 0).

Query parameters: ``timeout`` (seconds, per call and per connect), ``ca_cert``,
``cert_cert`` and ``cert_key`` (PEM paths, TLS only). A password in the URL is
percent-decoded; it never appears in a repr or a log line (:meth:`RedisOptions.redacted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, unquote, urlsplit

from shardroute.errors import ConfigError

__all__ = ["RedisOptions"]

_SCHEMES = {
    "redis": (False, False),
    "rediss": (True, False),
    "redis+cluster": (False, True),
    "rediss+cluster": (True, True),
}
_QUERY = ("timeout", "ca_cert", "cert_cert", "cert_key")


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Where and how to reach a Redis server or cluster.

    Args:
        nodes: ``(host, port)`` pairs: the server, or a cluster's startup nodes.
        cluster: talk the Redis Cluster protocol (``redis.cluster.RedisCluster``).
        db: the database number (single server only).
        tls: use TLS (``rediss://``); ``ca_cert`` verifies the server (default: the
            system's CAs), ``cert_cert``/``cert_key`` are a client certificate.
        username: the Redis 6 ACL user (``AUTH user password``).
        password: that user's password or, without a username, the ``requirepass``
            password. Never shown by ``repr``.
        timeout: seconds for a connect and for one command.
    """

    nodes: tuple[tuple[str, int], ...] = (("127.0.0.1", 6379),)
    cluster: bool = False
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    cert_cert: str | None = None
    cert_key: str | None = None
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("Redis needs at least one host:port")
        for host, port in self.nodes:
            if not host or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"invalid Redis node {host!r}:{port!r}")
        if len(self.nodes) > 1 and not self.cluster:
            raise ConfigError("several Redis nodes need a cluster URL (redis+cluster://)")
        if self.cluster and self.db != 0:
            raise ConfigError("a Redis Cluster has only database 0")
        if isinstance(self.db, bool) or not isinstance(self.db, int) or self.db < 0:
            raise ConfigError(f"Redis db must be an int >= 0, got {self.db!r}")
        if not self.timeout > 0:
            raise ConfigError(f"Redis timeout must be > 0, got {self.timeout!r}")
        if (self.cert_cert is None) != (self.cert_key is None):
            raise ConfigError("cert_cert and cert_key must be given together")
        if not self.tls and (self.ca_cert or self.cert_cert):
            raise ConfigError("ca_cert/cert_cert/cert_key need TLS (a rediss:// URL)")
        if self.username is not None and self.password is None:
            raise ConfigError("a Redis username needs a password")

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> RedisOptions:
        """Parse a ``redis://``, ``rediss://`` or ``redis+cluster://`` URL (module
        docstring); ``overrides`` replace parsed fields (e.g. ``password=``).

        Raises:
            ConfigError: not such a URL, or a bad host, port, db or parameter (the
                message shows the URL without its password).
        """
        if not isinstance(url, str):
            raise ConfigError(f"a Redis URL must be a string, got {type(url).__name__}")
        shown = _redact(url)
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in _SCHEMES:
            raise ConfigError(
                f"invalid session store URL {shown!r}: expected redis://, rediss://, "
                "redis+cluster:// or rediss+cluster://"
            )
        tls, cluster = _SCHEMES[scheme.lower()]
        parts = urlsplit(f"redis://{rest}")
        netloc = parts.netloc
        userinfo, _, hosts = netloc.rpartition("@")
        username: str | None = None
        password: str | None = None
        if userinfo:
            user, has_password, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if has_password else None
            if password is None:  # redis://secret@host: a bare password, like redis-py
                username, password = None, username
        nodes = tuple(_node(item, shown) for item in hosts.split(",")) if hosts else ()
        if not nodes:
            raise ConfigError(f"invalid session store URL {shown!r}: no host")
        db = 0
        path = parts.path.strip("/")
        if path:
            if cluster or not path.isdigit():
                raise ConfigError(
                    f"invalid session store URL {shown!r}: the path must be a database "
                    "number (single server only)"
                )
            db = int(path)
        fields: dict[str, object] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in _QUERY:
                raise ConfigError(
                    f"invalid session store URL {shown!r}: unknown parameter {name!r} "
                    f"(known: {', '.join(_QUERY)})"
                )
            if name == "timeout":
                try:
                    fields[name] = float(value)
                except ValueError:
                    raise ConfigError(
                        f"invalid session store URL {shown!r}: timeout must be seconds"
                    ) from None
            else:
                fields[name] = value
        options = cls(
            nodes=nodes,
            cluster=cluster,
            db=db,
            tls=tls,
            username=username,
            password=password,
            **fields,  # type: ignore[arg-type]
        )
        return replace(options, **overrides) if overrides else options  # type: ignore[arg-type]

    def redacted(self) -> str:
        """These options as a URL without the password (for messages and logs)."""
        scheme = ("rediss" if self.tls else "redis") + ("+cluster" if self.cluster else "")
        user = ""
        if self.password is not None:
            user = f"{self.username or ''}:***@"
        hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        db = "" if self.cluster else f"/{self.db}"
        return f"{scheme}://{user}{hosts}{db}"


def _node(text: str, shown: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), "6379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid session store URL {shown!r}: bad host:port {text!r}")
    return host, int(port)


def _redact(url: str) -> str:
    """``url`` with the password (the part of the userinfo after ':') replaced by ***."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not sep or not at or "/" in userinfo:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{hosts}" if colon else f"{scheme}://***@{hosts}"
