"""How a client-side component opens a channel to a shard: TLS or plaintext, decided
per shard from the component's :data:`~shardroute.security.tls.ChannelSecurity` and the
shard record's ``tls`` flag (docs/security.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from shardroute.model import Shard
from shardroute.security.tls import ChannelSecurity, TLSConfig

__all__ = ["ChannelMaker"]

log = logging.getLogger("shardroute.security")


class ChannelMaker:
    """Opens channels to shards with the security a component was configured with.

    - No security: plaintext channels.
    - A :class:`TLSConfig` or ``grpc.ChannelCredentials``: TLS channels, to every shard.
      A shard whose record says it serves plaintext is still called over TLS (its
      handshake then fails and the call fails over: nothing goes out in clear text),
      unless the :class:`TLSConfig` has ``allow_plaintext``; a warning is logged once
      per such shard.
    """

    def __init__(self, security: ChannelSecurity = None) -> None:
        self._security = security
        self._allow_plaintext = isinstance(security, TLSConfig) and security.allow_plaintext
        self._warned: set[str] = set()

    @property
    def security(self) -> ChannelSecurity:
        """What channels are opened with (None: plaintext)."""
        return self._security

    def credentials(self, shard: Shard) -> grpc.ChannelCredentials | None:
        """The credentials of a new channel to ``shard`` (None: plaintext)."""
        security = self._security
        if security is None:
            return None
        if not shard.tls:
            if self._allow_plaintext:
                return None
            if shard.id not in self._warned:
                self._warned.add(shard.id)
                log.warning(
                    "shard %s (%s) is registered as plaintext but this client sends TLS only: "
                    "calls to it fail over to other shards; no data is at risk; give the "
                    "shard TLS, or permit it with TLSConfig(allow_plaintext=True)",
                    shard.id,
                    shard.address,
                )
        if isinstance(security, TLSConfig):
            return security.channel_credentials()
        return security

    def options(self, options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """``options`` plus what TLS adds."""
        if isinstance(self._security, TLSConfig):
            return [*options, *self._security.channel_options()]
        return options

    def sync_channel(self, shard: Shard, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A threaded channel to ``shard``."""
        credentials = self.credentials(shard)
        if credentials is None:
            return grpc.insecure_channel(shard.address, list(options))
        return grpc.secure_channel(shard.address, credentials, self.options(list(options)))

    def aio_channel(
        self, shard: Shard, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``shard`` (call it in the loop that will use it)."""
        credentials = self.credentials(shard)
        if credentials is None:
            return grpc.aio.insecure_channel(shard.address, list(options))
        return grpc.aio.secure_channel(shard.address, credentials, self.options(list(options)))
