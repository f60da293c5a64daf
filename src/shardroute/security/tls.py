"""TLS and mutual TLS for every gRPC hop (docs/security.md): :class:`TLSConfig`.

One settings object, given to the clients, the shard servers, the mover and the CLI.
Files are read when they are used, not when the object is made: a server re-reads its
certificate and key on each new connection when their files changed (rotation without a
restart, through gRPC's dynamic server credentials); a client reads them for each new
channel (a channel already open keeps the certificate it connected with).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

from shardroute.errors import ConfigError

__all__ = ["ChannelSecurity", "ServerSecurity", "TLSConfig"]

log = logging.getLogger("shardroute.security")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} file {path!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Paths of PEM files for TLS on gRPC hops, client side and server side.

    Args:
        ca: the CA bundle that peers' certificates must chain to. A client verifies
            shards with it (None: the system's roots); a server that has it requires
            and verifies client certificates (mutual TLS).
        cert: this side's certificate chain (a server's is required; a client's is
            needed for mutual TLS).
        key: the private key of ``cert``.
        server_name: the name a client checks in shards' certificates instead of the
            host of their address (for shards registered by IP address, or one
            certificate shared by a fleet).
        allow_plaintext: a client with TLS sends to shards whose record says they serve
            plaintext (``"tls": false``) in plaintext, instead of refusing them.

    A shard with TLS refuses plaintext callers; with ``ca`` it also refuses callers
    without a certificate from that CA.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    allow_plaintext: bool = False

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("TLS cert and key must be given together")
        for what, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"TLS {what} file {path!r} does not exist")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials of a new client channel (files read now)."""
        root = _read(self.ca, "ca") if self.ca else None
        key = _read(self.key, "key") if self.key else None
        chain = _read(self.cert, "cert") if self.cert else None
        return grpc.ssl_channel_credentials(root, key, chain)

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel arguments TLS adds (the server-name override)."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials of a shard's port: its certificate, re-read when its files change;
        client certificates required and verified when ``ca`` is set."""
        if self.cert is None or self.key is None:
            raise ConfigError("a TLS shard server needs cert and key")
        return _ReloadingServerCerts(self).credentials()


class _ReloadingServerCerts:
    """gRPC's dynamic server credentials over a :class:`TLSConfig`'s files: each new
    handshake asks :meth:`fetch`, which answers a new configuration when a file's
    modification time or size changed (None: keep the current one)."""

    def __init__(self, config: TLSConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._initial = self._load()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        paths = [p for p in (self._config.cert, self._config.key, self._config.ca) if p]
        stamps = []
        for path in paths:
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((0, 0))
            else:
                stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def _load(self) -> Any:
        config = self._config
        assert config.cert is not None and config.key is not None
        pair = (_read(config.key, "key"), _read(config.cert, "cert"))
        root = _read(config.ca, "ca") if config.ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def fetch(self) -> Any:
        stamp = self._stat()
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                loaded = self._load()
            except ConfigError as exc:  # mid-rotation: keep serving the old certificate
                log.warning(
                    "TLS files changed but could not be read (%s): new connections keep the "
                    "old certificate; no data is at risk; finish writing the new files "
                    "(this is retried at the next connection)",
                    exc,
                )
                return None
            self._stamp = stamp
        log.info("TLS certificate files changed: new connections use the new certificate")
        return loaded

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self._config.ca is not None
        )


ChannelSecurity: TypeAlias = "TLSConfig | grpc.ChannelCredentials | None"
"""What a client-side component accepts: a :class:`TLSConfig`, gRPC credentials of the
user's own making, or None (plaintext)."""

ServerSecurity: TypeAlias = "TLSConfig | grpc.ServerCredentials | None"
"""What a shard server accepts: a :class:`TLSConfig`, gRPC server credentials of the
user's own making, or None (plaintext)."""
