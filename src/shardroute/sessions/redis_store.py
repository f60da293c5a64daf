"""The Redis session store: one hash per session, written by Lua compare-and-set
(docs/operations.md, "Choosing a session store"; docs/etcd-schema.md, "State in Redis").

A session is one Redis hash, ``/shardroute/<service>/state/{<tag>}`` (the braces are a
Cluster hash tag: anything a later version adds for the session lands on the same slot),
``<tag>`` the session key's wire form (:mod:`shardroute.session_keys`) with ``{`` and
``}`` also percent-encoded (``%7B``, ``%7D``), so a brace in a key can neither end the
tag early nor empty it, with the fields:

- ``v``: the session's version, a decimal integer that every write raises (to the
  server's clock in microseconds, or by one if that is not higher, so a version is
  never reused, even by a session ended and started again under the same key);
- ``s``: the snapshot, an SRS1 envelope (:mod:`shardroute.sessions.envelope`);
- ``r<id>``: one turn record each, ``<id>`` the version before the record, 20 digits.

Every write is one Lua script: compare ``v`` with the version the writer started from,
then append a record, or replace the whole hash by a new snapshot (a fold), or delete
it, and set the idle expiry (``PEXPIRE``). A read is one ``HGETALL``. The whole
session is one key, so a Redis Cluster keeps it on one slot and every script runs on
one node. Reads and writes are blocking calls (redis-py), run in a worker thread by the
asyncio shard server like every other store call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from shardroute.discovery.keys import KeySchema
from shardroute.errors import MalformedRecord
from shardroute.session_keys import encode_session_key
from shardroute.sessions.applied import Applied, added
from shardroute.sessions.envelope import (
    FoldPolicy,
    LogPosition,
    StoredState,
    apply_record,
    decode_envelope,
    decode_record,
    encode_envelope,
    encode_record,
    record_keep,
)
from shardroute.sessions.redis_options import RedisOptions
from shardroute.sessions.store import (
    DEFAULT_MAX_BYTES,
    check_max_bytes,
    check_save,
    check_ttl,
    check_version,
    stale,
    turns_after,
)

__all__ = ["RedisSessionStore"]

T = TypeVar("T")

_ID_DIGITS = 20

# KEYS[1]: the session; ARGV: expected version ("0": none), the field to write ("s": a
# new snapshot replacing the hash; "r<id>": a record), its value, the expiry in ms ("0":
# none). Returns the new version, or false when the compare failed.
_WRITE = """
redis.replicate_commands()
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '0' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return false end
elseif cur ~= ARGV[1] then
  return false
end
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
if cur and tonumber(cur) + 1 > v then v = tonumber(cur) + 1 end
local vs = string.format('%.0f', v)
if ARGV[2] == 's' then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'v', vs, ARGV[2], ARGV[3])
if ARGV[4] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return vs
"""

# KEYS[1]: the session; ARGV[1]: the expected version ("0": none). Returns 1 deleted,
# 0 nothing to delete, -1 the compare failed.
_DELETE = """
if ARGV[1] == '0' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
  return 0
end
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisSessionStore:
    """A :class:`~shardroute.sessions.SessionStore` in Redis or Redis Cluster (see the
    module docstring). Needs the ``redis`` extra (``pip install 'shardroute[redis]'``).

    Args:
        redis: a :class:`RedisOptions`, or a URL (``redis://``, ``rediss://``,
            ``redis+cluster://``; :meth:`RedisOptions.from_url`).
        service: the service whose sessions this store keeps (part of every key).
        max_bytes: the largest state (default 1 MiB).
        ttl_s: idle sessions expire exactly this long after their last write (the
            key's ``PEXPIRE``, set by every write); None: never.
        fold: when a checkpoint writes a snapshot instead of a turn record.

    Construction does no I/O: the connection (and a cluster's slot map) is made on first
    use. Thread-safe (redis-py's connection pool). :meth:`close` releases connections.
    """

    records_turns = True
    """``checkpoint`` takes ``applied=`` (:mod:`shardroute.sessions.applied`)."""

    def __init__(
        self,
        redis: RedisOptions | str,
        service: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_s: float | None = None,
        fold: FoldPolicy | None = None,
    ) -> None:
        self.options = redis if isinstance(redis, RedisOptions) else RedisOptions.from_url(redis)
        self.max_bytes = check_max_bytes(max_bytes)
        self.ttl_s = check_ttl(ttl_s)
        self.fold = fold if fold is not None else FoldPolicy()
        self._keys = KeySchema(service)
        self._ttl_ms = "0" if self.ttl_s is None else str(max(1, round(self.ttl_s * 1000)))
        # Mutable state under _lock: the client (made on first use), bytes written.
        self._lock = threading.Lock()
        self._client: Any = None
        self._scripts: tuple[Any, Any] | None = None
        self.bytes_written = 0

    def __repr__(self) -> str:
        return f"RedisSessionStore({self.options.redacted()!r}, service={self.service!r})"

    @property
    def service(self) -> str:
        """The service whose sessions this store keeps."""
        return self._keys.service

    def key(self, session_key: str) -> str:
        """The Redis key of a session's hash: its wire form, braces percent-encoded,
        in a hash tag.

        Raises:
            InvalidSessionKey: ``session_key`` is not a valid session key.
        """
        tag = encode_session_key(session_key).replace("{", "%7B").replace("}", "%7D")
        return f"{self._keys.prefix}state/{{{tag}}}"

    # -- reads ----------------------------------------------------------------------

    def version(self, session_key: str) -> int:
        """The session's stored version (0 when none), without reading its state."""
        key = self.key(session_key)
        raw = self._call(lambda client: client.hget(key, "v"))
        return self._parse_version(key, raw) if raw is not None else 0

    def load(self, session_key: str) -> StoredState | None:
        """The session's state: its snapshot with every turn record applied, each step
        checked (size, CRC-32), or None.

        Raises:
            MalformedRecord: a value is corrupt or a record does not apply (the message
                names the key and field); the stored state is left as it is.
            SessionStoreUnavailable: Redis is unreachable.
        """
        key = self.key(session_key)
        fields: dict[bytes, bytes] = self._call(lambda client: client.hgetall(key))
        if not fields:
            return None
        version = fields.get(b"v")
        records = sorted(
            (name.decode(), value)
            for name, value in fields.items()
            if name.startswith(b"r") and len(name) == _ID_DIGITS + 1 and name[1:].isdigit()
        )
        snapshot = fields.get(b"s")
        if snapshot is None:
            reason = "turn records without a snapshot" if records else "no snapshot"
            raise MalformedRecord(f"{key}#s", reason)
        if version is None:
            raise MalformedRecord(f"{key}#v", "no version")
        stored = decode_envelope(f"{key}#s", snapshot, 1)
        data, owner, log_bytes, applied = stored.data, stored.owner, 0, stored.applied
        for name, value in records:
            record = decode_record(f"{key}#{name}", value)
            data = apply_record(f"{key}#{name}", data, record)
            owner, log_bytes = record.owner, log_bytes + len(record.data)
            applied += record.applied
        position = LogPosition(
            turns=len(records),
            log_bytes=log_bytes,
            snapshot_bytes=len(stored.data),
            record=int(records[-1][0][1:]) if records else 0,
        )
        return StoredState(data, self._parse_version(key, version), owner, position, applied)

    # -- writes ---------------------------------------------------------------------

    def checkpoint(
        self,
        session_key: str,
        data: bytes,
        *,
        owner: str,
        previous: StoredState | None,
        applied: Applied | None = None,
    ) -> StoredState:
        """Save one turn (see :meth:`SessionStore.checkpoint`): a turn record, or a
        snapshot when the fold policy says so."""
        expected = 0 if previous is None else previous.version
        data = check_save(session_key, data, owner, expected, self.max_bytes)
        applied = turns_after(previous, applied)
        if previous is None or expected == 0:
            return self._snapshot(session_key, data, owner, 0, applied)
        keep = record_keep(previous, data, self.fold)
        if keep is None:
            return self._snapshot(session_key, data, owner, expected, applied)
        new = added(previous.applied, applied)
        record = encode_record(previous.data, data, owner=owner, keep=keep, applied=new)
        field = f"r{expected:0{_ID_DIGITS}d}"
        version = self._write(session_key, expected, field, record)
        position = previous.log.appended(len(data) - keep, expected)
        return StoredState(data, version, owner, position, applied)

    def save(self, session_key: str, data: bytes, *, owner: str, expected_version: int) -> int:
        """Compare-and-set the session's whole state (see :meth:`SessionStore.save`)."""
        data = check_save(session_key, data, owner, expected_version, self.max_bytes)
        return self._snapshot(session_key, data, owner, expected_version).version

    def delete(self, session_key: str, *, expected_version: int | None = None) -> bool:
        """Remove the session's hash (see :meth:`SessionStore.delete`)."""
        key = self.key(session_key)
        check_version(expected_version)
        if expected_version is None:
            return bool(self._call(lambda client: client.delete(key)))
        _write, delete = self._script_pair()
        outcome = self._call(lambda client: delete(keys=[key], args=[str(expected_version)]))
        if int(outcome) < 0:
            raise stale(session_key, expected_version, "deleted")
        return bool(outcome)

    def close(self) -> None:
        """Close the connections (idempotent; a later call connects again)."""
        with self._lock:
            client, self._client, self._scripts = self._client, None, None
        if client is not None:
            client.close()

    # -- internals ------------------------------------------------------------------

    def _snapshot(
        self, session_key: str, data: bytes, owner: str, expected: int, applied: Applied = ()
    ) -> StoredState:
        raw = encode_envelope(data, owner=owner, applied=applied)
        version = self._write(session_key, expected, "s", raw)
        position = LogPosition(snapshot_bytes=len(data))
        return StoredState(data, version, owner, position, applied)

    def _write(self, session_key: str, expected: int, field: str, value: bytes) -> int:
        key = self.key(session_key)
        write, _delete = self._script_pair()
        args = [str(expected), field, value, self._ttl_ms]
        raw = self._call(lambda client: write(keys=[key], args=args))
        if raw is None:
            raise stale(session_key, expected, "written")
        with self._lock:
            self.bytes_written += len(value)
        return self._parse_version(key, raw)

    @staticmethod
    def _parse_version(key: str, raw: bytes | str | int) -> int:
        try:
            version = int(raw)
        except ValueError:
            raise MalformedRecord(f"{key}#v", f"version {raw!r} is not an integer") from None
        if version <= 0:
            raise MalformedRecord(f"{key}#v", f"version {version} is not > 0")
        return version

    def _script_pair(self) -> tuple[Any, Any]:
        scripts = self._scripts
        if scripts is None:
            client = self._call(lambda client: client)
            scripts = (client.register_script(_WRITE), client.register_script(_DELETE))
            self._scripts = scripts
        return scripts

    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                from shardroute.sessions._redis_client import connect

                self._client = connect(self.options)
            return self._client

    def _call(self, fn: Callable[[Any], T]) -> T:
        """``fn(client)``, with redis-py's errors translated at this boundary."""
        from shardroute.sessions._redis_client import translate

        try:
            return fn(self._connect())
        except Exception as exc:
            error = translate(exc, self.options)
            if error is None:
                raise
            raise error from exc
