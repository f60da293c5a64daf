"""Failing over between the endpoints of an etcd cluster, for one call.

The ``etcd3`` package's multi-endpoint client marks an endpoint failed when one of *its*
calls fails with UNAVAILABLE, DEADLINE_EXCEEDED or INTERNAL and uses the next one on the
*next* call; it retries nothing, and the calls we make on its stubs directly
(transactions, status, watches) mark nothing. Here, for every call of
:class:`~shardroute.etcd.client.EtcdClient` with more than one endpoint:

- a failure that says the endpoint is bad marks it failed (skipped for
  ``EtcdOptions.retry_failed_endpoint_s``), whoever made the call;
- the call is tried again on the next endpoint, within its timeout, when that is safe:
  a call that changes nothing, or whose effect does not depend on being applied once
  (:data:`IDEMPOTENT`: reads, plain puts and deletes, lease keep-alives), after any
  endpoint failure; any other call (compare-and-swap transactions, lease grants) only
  when etcd cannot have run it (:data:`UNSENT`): the connection was refused, or the
  member answered "no leader" before proposing anything, as etcd's own Go client does.

Every call also carries etcd's ``hasleader`` metadata: a member that has lost its
leader refuses it at once ("no leader", so it is retried elsewhere) instead of holding
it until its deadline, and cancels a watch it can no longer keep current.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar

import grpc

from shardroute.errors import EtcdUnavailable
from shardroute.etcd._translate import _translated

P = ParamSpec("P")
R = TypeVar("R")

Safety = Literal["idempotent", "unsent"]
IDEMPOTENT: Safety = "idempotent"
UNSENT: Safety = "unsent"

REQUIRE_LEADER = ("hasleader", "true")
"""etcd's metadata asking a member to refuse the call when it has no leader."""

_ENDPOINT_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)
_NOT_RUN = ("failed to connect", "connection refused", "etcdserver: no leader")
_BACKOFF_S = (0.02, 0.25)
_ATTEMPT_SHARE = 0.45
"""Of a call's timeout, what one attempt gets with several endpoints: two attempts and
the pauses between them fit in it."""


def rpc_error(exc: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind ``exc``: itself, or the one the ``etcd3`` package replaced
    with its own exception (``__context__``)."""
    seen: BaseException | None = exc
    for _ in range(3):
        if isinstance(seen, grpc.RpcError):
            return seen
        seen = None if seen is None else seen.__context__
    return None


def endpoint_failed(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` says the endpoint (not the request) is the problem; etcd answers
    a proposal that outlived its deadline with UNKNOWN "context deadline exceeded"."""
    if not isinstance(exc, grpc.Call):
        return False
    code = exc.code()
    if code is grpc.StatusCode.UNKNOWN:
        return "context deadline exceeded" in (exc.details() or "")
    return code in _ENDPOINT_FAILURES


def not_run(exc: BaseException) -> bool:
    """Whether etcd cannot have run the call that failed with ``exc``."""
    if type(exc).__name__ == "NoServerAvailableError":  # every endpoint failed recently
        return True
    error = rpc_error(exc)
    if not isinstance(error, grpc.Call) or error.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    details = (error.details() or "").lower()
    return any(text in details for text in _NOT_RUN)


def _pause(exc: BaseException, error: grpc.RpcError | None) -> bool:
    """Whether to wait before the next attempt: every endpoint failed a moment ago
    (the package's ``NoServerAvailableError``), or the member has no leader."""
    if type(exc).__name__ == "NoServerAvailableError":
        return True
    return isinstance(error, grpc.Call) and "no leader" in (error.details() or "")


def mark_failed(client: Any, endpoint: Any) -> None:
    """Mark ``endpoint`` of the ``etcd3`` multi-endpoint ``client`` failed, so the next
    call goes to another (the package does this only for its own calls)."""
    if endpoint is None or endpoint.is_failed():
        return
    endpoint.fail()
    if client.endpoint_in_use is endpoint:
        client._clear_old_stubs()


class Failover:
    """How one :class:`~shardroute.etcd.client.EtcdClient` retries its calls: only with
    several endpoints (one endpoint keeps the package's behaviour: fail, and skip it
    for ``retry_failed_endpoint_s``), within ``timeout`` seconds per call, all attempts
    included: each attempt gets :attr:`attempt_timeout` (a little under half of it with
    several endpoints, so a member that hangs leaves time for a whole attempt on
    another), and an attempt starts only while that much is left (a call never takes
    longer than ``timeout``: the lease keep-alive relies on it, docs/server.md)."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float) -> None:
        self.endpoints = endpoints
        self.enabled = len(endpoints) > 1
        self.timeout = timeout
        self.attempt_timeout = timeout * _ATTEMPT_SHARE if self.enabled else timeout

    def call(self, safety: Safety, attempt: Callable[[], R], on_failure: Callable[[], Any]) -> R:
        """Run ``attempt`` until it succeeds, may not be retried, or the timeout is
        spent; ``on_failure`` is called after each endpoint failure (to mark it)."""
        deadline = time.monotonic() + self.timeout
        delay = _BACKOFF_S[0]
        failures = 0
        while True:
            try:
                return attempt()
            except Exception as exc:
                error = rpc_error(exc)
                if error is not None and endpoint_failed(error):
                    on_failure()
                if not self.enabled or not self._retryable(safety, exc, error):
                    raise
                spare = deadline - time.monotonic() - self.attempt_timeout
                if spare < 0:  # no time for a whole attempt
                    raise self._exhausted(exc, error) from exc
                failures += 1
                if failures % len(self.endpoints) == 0 or _pause(exc, error):
                    # Every endpoint failed, or the cluster is electing a leader: give
                    # it a moment before the next round.
                    time.sleep(min(delay, spare))  # backoff between rounds
                    delay = min(delay * 2, _BACKOFF_S[1])

    def _exhausted(self, exc: BaseException, error: grpc.RpcError | None) -> EtcdUnavailable:
        """The error once every endpoint failed for the whole timeout."""
        cause = error.details() if isinstance(error, grpc.Call) else str(exc) or type(exc).__name__
        applied = (
            "it was not applied"
            if not_run(exc)
            else "a write may or may not have been applied: read before writing again"
        )
        return EtcdUnavailable(
            f"no etcd endpoint answered within {self.timeout}s "
            f"({', '.join(self.endpoints)}; last error: {cause}); {applied}. Check that a "
            "majority of the etcd members runs and is reachable from here"
        )

    @staticmethod
    def _retryable(safety: Safety, exc: BaseException, error: grpc.RpcError | None) -> bool:
        if not_run(exc):
            return True
        return safety == IDEMPOTENT and error is not None and endpoint_failed(error)


def failover(safety: Safety) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate an :class:`~shardroute.etcd.client.EtcdClient` method: run it through
    the client's :class:`Failover` with ``safety``."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self: Any = args[0]
            policy: Failover = self._failover
            return policy.call(safety, lambda: fn(*args, **kwargs), self._mark_current_failed)

        return wrapper

    return decorate


def etcd_call(safety: Safety) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """An :class:`~shardroute.etcd.client.EtcdClient` call: retried on another endpoint
    when ``safety`` allows, its failures translated once (``_translate``)."""
    return lambda fn: _translated(failover(safety)(fn))
