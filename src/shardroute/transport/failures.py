"""What a failed gRPC call means for retrying, decided once, from the status alone.

The transport sorts every ``grpc.RpcError`` into a :class:`Failure` and translates it
into one exception of :mod:`shardroute.errors` (the original stays as ``__cause__``).
"""

from __future__ import annotations

import enum

import grpc

from shardroute import metadata
from shardroute.errors import (
    CallFailed,
    DeadlineExceeded,
    OutcomeUnknown,
    PayloadTooLarge,
    ShardRouteError,
    UnknownMethod,
)

__all__ = [
    "Failure",
    "classify",
    "peer_went_silent",
    "redirect_target",
    "rpc_brief",
    "translate",
]

# UNAVAILABLE details that mean the connection was never made, so the request never
# left this process (gRPC core wording, stable across releases).
_NOT_CONNECTED = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "dns resolution failed",
    "name resolution",
    "no route to host",
    "channel is in state transient_failure",
    "empty address list",
)

# UNAVAILABLE details that mean the peer stopped answering HTTP/2 pings (keepalive, see
# transport.channels.KEEPALIVE_OPTIONS): the process is stopped, wedged or cut off.
_SILENT = ("ping timeout", "keepalive watchdog timeout")


# Status codes a shard refuses a call with before running it (with the trailer).
_REFUSALS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})


class Failure(enum.Enum):
    """How a call failed, as far as retrying is concerned."""

    NOT_SENT = "not_sent"
    """The request never reached the shard (no connection): safe to send elsewhere."""
    MAYBE_EXECUTED = "maybe_executed"
    """The connection broke mid-call: the shard may have executed it."""
    DEADLINE = "deadline"
    """The deadline passed."""
    TOO_LARGE = "too_large"
    """A message exceeded the size limit."""
    UNIMPLEMENTED = "unimplemented"
    """The shard does not serve the method."""
    APPLICATION = "application"
    """The shard answered with an error status: the application's own answer."""
    REFUSED = "refused"
    """The shard refused the call before running any of it (the
    ``x-shardroute-not-executed`` trailer: session busy or moving, store or etcd
    unreachable, no topology yet): retried with backoff within the deadline."""


def _code_and_details(error: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    if isinstance(error, grpc.Call):
        return error.code(), error.details() or ""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    return (code() if callable(code) else None), (details() if callable(details) else "") or ""


def rpc_brief(error: BaseException, limit: int = 160) -> str:
    """A gRPC error in one short phrase for a log line (``CODE: details``, cut at
    ``limit`` characters), not the call's whole debug string."""
    if not isinstance(error, grpc.RpcError):
        return str(error)[:limit]
    code, details = _code_and_details(error)
    name = code.name if code else "error"
    text = f"{name}: {details}" if details else name
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _trailer(error: grpc.RpcError, key: str) -> str | None:
    trailing = getattr(error, "trailing_metadata", None)
    try:
        pairs = trailing() if callable(trailing) else None
    except Exception:  # an error without trailers
        return None
    return metadata.get(pairs, key)


def redirect_target(error: grpc.RpcError) -> str | None:
    """The shard a redirect names (``FAILED_PRECONDITION`` with the
    ``x-shardroute-redirect`` trailer), or None for any other error."""
    code, _ = _code_and_details(error)
    if code is not grpc.StatusCode.FAILED_PRECONDITION:
        return None
    return _trailer(error, metadata.REDIRECT) or None


def peer_went_silent(error: grpc.RpcError) -> bool:
    """Whether the connection was dropped because the shard stopped answering HTTP/2
    pings (a stopped or wedged process): the shard is ejected at once, like one that
    refuses connections (the call itself may have executed)."""
    code, details = _code_and_details(error)
    text = details.lower()
    return code is grpc.StatusCode.UNAVAILABLE and any(marker in text for marker in _SILENT)


def classify(error: grpc.RpcError) -> Failure:
    """Sort a gRPC error into a :class:`Failure`."""
    code, details = _code_and_details(error)
    if code in _REFUSALS and _trailer(error, metadata.NOT_EXECUTED) == "1":
        return Failure.REFUSED
    text = details.lower()
    if code is grpc.StatusCode.UNAVAILABLE:
        if _trailer(error, metadata.LOAD) is not None:
            # The shard itself answered (its load trailer is there): its own status,
            # whatever the text says ("session store unreachable: ... failed to connect"
            # is about etcd, not about this connection).
            return Failure.APPLICATION
        if any(marker in text for marker in _NOT_CONNECTED):
            return Failure.NOT_SENT
        return Failure.MAYBE_EXECUTED
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Failure.DEADLINE
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in text:
        return Failure.TOO_LARGE
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return Failure.UNIMPLEMENTED
    if code is grpc.StatusCode.CANCELLED and "locally cancelled" not in text:
        return Failure.MAYBE_EXECUTED  # the channel went away under the call
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and (
        "stream removed" in text or "rst_stream" in text or "socket closed" in text
    ):
        return Failure.MAYBE_EXECUTED
    return Failure.APPLICATION


def translate(
    failure: Failure, error: grpc.RpcError, shard_id: str, method: str
) -> ShardRouteError:
    """The :mod:`shardroute.errors` exception for a failure the caller must see."""
    code, details = _code_and_details(error)
    where = f"{method} on shard {shard_id!r}"
    if failure is Failure.DEADLINE:
        return DeadlineExceeded(f"deadline exceeded calling {where}", shard_id)
    if failure is Failure.TOO_LARGE:
        return PayloadTooLarge(f"message too large calling {where}: {details}")
    if failure is Failure.UNIMPLEMENTED:
        return UnknownMethod(f"shard {shard_id!r} does not implement {method}: {details}")
    if failure in (Failure.MAYBE_EXECUTED, Failure.NOT_SENT):
        return OutcomeUnknown(
            f"connection lost during {where} ({details}); it may have executed and was not "
            "retried because the call is not marked idempotent",
            shard_id,
        )
    name = code.name if code is not None else "UNKNOWN"
    return CallFailed(
        f"{where} failed: {name}: {details}", code=code, details=details, shard_id=shard_id
    )
