"""The etcd key schema (docs/etcd-schema.md): one place that knows every key's shape."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shardroute.errors import ConfigError
from shardroute.session_keys import encode_session_key

__all__ = ["KeyKind", "KeySchema", "decode_key", "key_text", "prefix_end"]

ROOT = "/shardroute"


class KeyKind(enum.Enum):
    """What a key under a service's prefix holds."""

    SHARD = "shards"
    LOAD = "load"
    SESSION = "sessions"
    STATE = "state"
    CONFIG = "config"
    OTHER = "other"


def _check_name(what: str, name: str) -> str:
    if not name or "/" in name or name.strip() != name or any(ord(c) < 32 for c in name):
        raise ConfigError(
            f"invalid {what} {name!r}: must be non-empty, without '/', control characters "
            "or surrounding whitespace"
        )
    return name


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Keys of one service: ``/shardroute/<service>/...``."""

    service: str

    def __post_init__(self) -> None:
        _check_name("service name", self.service)

    @property
    def prefix(self) -> str:
        """The prefix every key of this service starts with (ends with '/')."""
        return f"{ROOT}/{self.service}/"

    def shard(self, shard_id: str) -> str:
        """Key of a shard record."""
        return f"{self.prefix}shards/{_check_name('shard id', shard_id)}"

    def load(self, shard_id: str) -> str:
        """Key of a shard's load report."""
        return f"{self.prefix}load/{_check_name('shard id', shard_id)}"

    def session(self, session_key: str) -> str:
        """Key of a session override (the session key in its wire form, no ``/``:
        :mod:`shardroute.session_keys`)."""
        return f"{self.prefix}sessions/{encode_session_key(session_key)}"

    def state(self, session_key: str) -> str:
        """Key of a session's stored state (the etcd session store; the session key in
        its wire form, no ``/``)."""
        return f"{self.prefix}state/{encode_session_key(session_key)}"

    @property
    def topology_range(self) -> tuple[str, str]:
        """The key range topology sources read and watch: ``config``, ``load/``,
        ``sessions/`` and ``shards/``, which sort together, but not ``state/`` (session
        state is written on every turn and is no business of the topology)."""
        return f"{self.prefix}config", prefix_end(f"{self.prefix}shards/")

    @property
    def config(self) -> str:
        """Key of the service's routing configuration."""
        return f"{self.prefix}config"

    def classify(self, key: str) -> tuple[KeyKind, str]:
        """Split a key of this service into its kind and name (shard id, or session key
        in its wire form: :func:`~shardroute.session_keys.decode_session_key`).

        Keys outside the schema (deeper paths, unknown folders) are ``KeyKind.OTHER``.
        """
        if not key.startswith(self.prefix):
            return KeyKind.OTHER, key
        rest = key[len(self.prefix) :]
        if rest == "config":
            return KeyKind.CONFIG, ""
        folder, sep, name = rest.partition("/")
        if not sep or not name or "/" in name:
            return KeyKind.OTHER, rest
        for kind in (KeyKind.SHARD, KeyKind.LOAD, KeyKind.SESSION, KeyKind.STATE):
            if folder == kind.value:
                return kind, name
        return KeyKind.OTHER, rest


def decode_key(raw: bytes) -> str:
    """An etcd key (bytes) as text. A key that is not UTF-8 (etcd keys are any bytes)
    keeps its bad bytes as lone surrogates (``surrogateescape``), so reading it never
    fails and :func:`key_text` can tell it apart."""
    return raw.decode("utf-8", "surrogateescape")


def key_text(key: str) -> str:
    """``key`` itself when it is valid UTF-8, else a printable form of it (bad bytes as
    ``\\xNN``) for logs and ``Topology.malformed``."""
    try:
        key.encode()
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return key


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    data = bytearray(prefix.encode())
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return data.decode("latin-1")
        data.pop()
    return "\0"
