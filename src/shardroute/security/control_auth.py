"""Who may call a shard's control service (docs/security.md, "The control service").

The ``ShardControl`` methods that move, list, export or stop sessions (``Drain``,
``ListSessions``, ``ExportSession``, ``ImportSession``, ``WarmSession``,
``ReleaseSession``, ``GetStatus``) are an admin surface. A shard admits a caller to them
when one of these holds (:class:`ControlAuth`):

- its mutual-TLS certificate names an identity matching ``allowed_identities``
  (fnmatch patterns over the certificate's subject alternative names and common name);
- it sends the shared ``token`` (``authorization: Bearer <token>`` metadata), compared
  in constant time;
- neither is configured, and the caller is on this machine (a loopback peer).

``EndSession`` is not on the list: it ends the caller's own conversation and is called
by application clients, like the application's own methods.

Callers (the mover, the CLI, a draining shard) send the token of their
:class:`ControlToken`; with mutual TLS their certificate does the rest.
"""

from __future__ import annotations

import fnmatch
import hmac
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc

from shardroute import metadata
from shardroute.errors import ConfigError, Refused

__all__ = [
    "ADMIN_METHODS",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "ControlAuth",
    "ControlGuard",
    "ControlToken",
    "is_loopback_peer",
]

log = logging.getLogger("shardroute.security")

TOKEN_ENV = "SHARDROUTE_CONTROL_TOKEN"
"""Environment variable holding the control token itself."""
TOKEN_FILE_ENV = "SHARDROUTE_CONTROL_TOKEN_FILE"
"""Environment variable naming a file that holds the control token."""

ADMIN_METHODS = frozenset(
    {
        "GetStatus",
        "Drain",
        "ListSessions",
        "ExportSession",
        "ImportSession",
        "WarmSession",
        "ReleaseSession",
    }
)
"""``ShardControl`` methods only authorised callers may call."""

_HEADER = "authorization"
_MIN_TOKEN_CHARS = 16


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the control token file {path!r}: {exc}") from exc
    if not token:
        raise ConfigError(f"the control token file {path!r} is empty")
    return token


@dataclass(frozen=True, slots=True)
class ControlToken:
    """The shared secret a caller of the control service sends. Never shown in a repr."""

    value: str = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) < _MIN_TOKEN_CHARS or not self.value.isprintable():
            raise ConfigError(
                f"a control token must be at least {_MIN_TOKEN_CHARS} printable characters"
            )

    @classmethod
    def from_file(cls, path: str) -> ControlToken:
        """The token in the file at ``path`` (surrounding whitespace stripped)."""
        return cls(_read_token(path))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ControlToken | None:
        """The token from ``$SHARDROUTE_CONTROL_TOKEN_FILE`` (a file) or
        ``$SHARDROUTE_CONTROL_TOKEN`` (the value); None when neither is set."""
        env = os.environ if environ is None else environ
        path = env.get(TOKEN_FILE_ENV)
        if path:
            return cls.from_file(path)
        value = env.get(TOKEN_ENV)
        return cls(value) if value else None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token."""
        return ((_HEADER, f"Bearer {self.value}"),)

    def matches(self, sent: str | None) -> bool:
        """Whether ``sent`` (the ``authorization`` value received) carries this token."""
        if sent is None or not sent.startswith("Bearer "):
            return False
        return hmac.compare_digest(sent[7:].encode(), self.value.encode())


@dataclass(frozen=True, slots=True)
class ControlAuth:
    """Who may call a shard's control service (see the module doc).

    Args:
        token: the shared token callers must send (None: no token accepted).
        allowed_identities: fnmatch patterns (``"mover.*.example.com"``,
            ``"spiffe://prod/ns/chat/*"``) matched against the subject alternative
            names and common name of a mutual-TLS caller's certificate; needs a shard
            with ``TLSConfig(ca=...)`` (client certificates verified).
        allow_loopback: with neither configured, admit callers on this machine.
    """

    token: ControlToken | None = None
    allowed_identities: tuple[str, ...] = ()
    allow_loopback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.allowed_identities, str):
            object.__setattr__(self, "allowed_identities", (self.allowed_identities,))
        else:
            object.__setattr__(self, "allowed_identities", tuple(self.allowed_identities))
        if any(not pattern for pattern in self.allowed_identities):
            raise ConfigError("allowed_identities patterns must be non-empty")

    @property
    def configured(self) -> bool:
        """Whether a token or identities are set (else: loopback callers only)."""
        return self.token is not None or bool(self.allowed_identities)

    @classmethod
    def from_env(
        cls, allowed_identities: Sequence[str] = (), environ: dict[str, str] | None = None
    ) -> ControlAuth:
        """Identities as given, the token from the environment (:meth:`ControlToken.
        from_env`)."""
        return cls(ControlToken.from_env(environ), tuple(allowed_identities))


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000``,
    ``unix:...``) is on this machine."""
    if peer.startswith("unix:"):
        return True
    if peer.startswith("ipv4:"):
        return peer[5:].startswith("127.")
    if peer.startswith("ipv6:"):  # gRPC writes the brackets percent-encoded: %5B::1%5D
        host = unquote(peer[5:]).rpartition(":")[0].strip("[]")
        return host in ("::1", "0:0:0:0:0:0:0:1") or host.startswith("::ffff:127.")
    return False


def _identities(auth_context: dict[str, Iterable[bytes]]) -> list[str]:
    names: list[str] = []
    for prop in ("x509_subject_alternative_name", "x509_common_name"):
        for value in auth_context.get(prop, ()):
            names.append(value.decode("utf-8", "replace"))
    return names


class ControlGuard:
    """Applies a :class:`ControlAuth` to one call (see :meth:`refusal`)."""

    def __init__(self, auth: ControlAuth | None, shard_id: str = "") -> None:
        self.auth = auth if auth is not None else ControlAuth()
        self._shard_id = shard_id
        self.refused_total = 0
        """Control calls refused so far."""

    def refusal(self, context: Any) -> Refused | None:
        """None when the caller of ``context`` (a sync or asyncio servicer context) may
        call admin methods; else the :class:`Refused` to answer with (UNAUTHENTICATED:
        no credential; PERMISSION_DENIED: a wrong one, or a remote caller when nothing is
        configured)."""
        auth = self.auth
        if auth.allowed_identities:
            names = _identities(context.auth_context())
            if any(
                fnmatch.fnmatchcase(name, pattern)
                for name in names
                for pattern in auth.allowed_identities
            ):
                return None
        sent = metadata.get(context.invocation_metadata(), _HEADER)
        if auth.token is not None and auth.token.matches(sent):
            return None
        peer = context.peer()
        if not auth.configured:
            if auth.allow_loopback and is_loopback_peer(peer):
                return None
            return self._refuse(
                grpc.StatusCode.PERMISSION_DENIED,
                "the control service admits only callers on this machine (no control token "
                "or mTLS identities configured on this shard)",
                peer,
            )
        if auth.token is not None and sent is None:
            return self._refuse(
                grpc.StatusCode.UNAUTHENTICATED,
                "the control service needs credentials: send the control token "
                f"(${TOKEN_FILE_ENV} or ${TOKEN_ENV}) or an allowed mTLS certificate",
                peer,
            )
        return self._refuse(
            grpc.StatusCode.PERMISSION_DENIED,
            "the caller's credentials are not allowed to call the control service",
            peer,
        )

    def _refuse(self, code: grpc.StatusCode, details: str, peer: str) -> Refused:
        self.refused_total += 1
        log.warning(
            "shard %s refused a control call from %s (%s): nothing was changed; if the "
            "caller is yours, give it the control token or an allowed mTLS identity",
            self._shard_id,
            peer,
            code.name,
            extra={"shard": self._shard_id, "peer": peer, "code": code.name},
        )
        return Refused(code, details)
