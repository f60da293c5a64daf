"""Trust boundaries (docs/security.md): TLS on every gRPC hop and who may call a shard's
control service."""

from shardroute.security.channels import ChannelMaker
from shardroute.security.control_auth import ControlAuth, ControlGuard, ControlToken
from shardroute.security.tls import ChannelSecurity, ServerSecurity, TLSConfig

__all__ = [
    "ChannelMaker",
    "ChannelSecurity",
    "ControlAuth",
    "ControlGuard",
    "ControlToken",
    "ServerSecurity",
    "TLSConfig",
]
