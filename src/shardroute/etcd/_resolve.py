"""Settling a compare-and-swap write whose outcome is unknown (its member died, or hung
while the cluster elected a new leader), with several etcd endpoints.

Such a write may have been applied (etcd replicated it before the member went) or lost.
Retrying it blindly is wrong either way: applied, the retry's compare fails and the
caller takes its own write for someone else's. So, for a transaction that has compares
and puts, and otherwise only deletes (a session checkpoint or fold, an override, a
fence), within the call's timeout:

1. read the keys it puts, at one revision, on a live member: if every one holds exactly
   the value (and lease) it wrote, at one common revision, it was applied: answer as etcd
   would have (success, that revision);
2. otherwise send it again: the compares decide, as they would have the first time (a
   lost write is now applied once; a write that lands late fails the compare of the
   other, so only one of them is applied);
3. if that compare fails, read once more: the first write may have landed in between.

A member failure on the way starts over at 1. What cannot be settled in time raises the
original error. Transactions without compares or without a put are not settled here
(their effect cannot be read back): their unknown outcome stays an error. Transactions
that only read are simply sent again (``read_only``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from shardroute.etcd._failover import endpoint_failed, not_run, rpc_error

__all__ = ["can_settle", "landed_despite_nospace", "nospace", "settle"]

Attempt = Callable[[list[Any], list[Any], float], tuple[bool, list[Any]]]
"""One transaction on the current member: ``(compare, success, timeout)``."""

_BACKOFF_S = (0.02, 0.25)


def read_only(success: Sequence[Any]) -> bool:
    """Whether a transaction only reads (then it may simply be sent again)."""
    return all(op.HasField("request_range") for op in success)


def can_settle(exc: BaseException, compare: Sequence[Any], success: Sequence[Any]) -> bool:
    """Whether ``exc`` left the outcome unknown and the transaction is one we can settle:
    compares, at least one put, and otherwise only deletes (their effect goes with the
    puts: one transaction, one revision)."""
    error = rpc_error(exc)
    unknown = error is not None and endpoint_failed(error) and not not_run(exc)
    writes = all(
        op.HasField("request_put") or op.HasField("request_delete_range") for op in success
    )
    puts = any(op.HasField("request_put") for op in success)
    return unknown and bool(compare) and writes and puts


def settle(
    attempt: Attempt,
    on_failure: Callable[[], object],
    compare: list[Any],
    success: list[Any],
    deadline: float,
    attempt_timeout: float,
) -> tuple[bool, list[Any]] | None:
    """The transaction's result once settled (steps 1 to 3 above), or None when it could
    not be settled before ``deadline``."""
    from shardroute.etcd import txn

    puts = [op.request_put for op in success if op.HasField("request_put")]
    reads = [txn.read(put.key.decode()) for put in puts]
    delay = _BACKOFF_S[0]
    while (left := deadline - time.monotonic()) > 0:
        try:
            found = _applied(success, puts, attempt([], reads, min(left, attempt_timeout))[1])
            if found is not None:
                return True, found
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            result = attempt(compare, success, min(left, attempt_timeout))
            if result[0]:
                return result
            left = max(deadline - time.monotonic(), 0.05)
            found = _applied(success, puts, attempt([], reads, min(left, attempt_timeout))[1])
            return (True, found) if found is not None else result
        except Exception as exc:
            error = rpc_error(exc)
            if error is not None and endpoint_failed(error):
                on_failure()  # that member too: the next attempt goes to another
            elif not not_run(exc):  # e.g. every member failed a moment ago: wait a little
                raise
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))  # backoff
            delay = min(delay * 2, _BACKOFF_S[1])
    return None


def nospace(exc: BaseException) -> bool:
    """Whether ``exc`` is etcd's NOSPACE answer (its database reached its quota).

    etcd *applies* the write that crosses the quota and then answers NOSPACE (its quota
    applier checks the space, applies the write, then reports the error: a write must
    apply alike on every member), so that one write may have landed; every write after
    it, once the alarm is raised, is refused before it is applied."""
    error = rpc_error(exc)
    return (
        isinstance(error, grpc.Call)
        and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        and "space exceeded" in (error.details() or "")
    )


def landed_despite_nospace(
    attempt: Attempt, success: list[Any], timeout: float
) -> list[Any] | None:
    """After a NOSPACE answer to a write: read back the keys it puts (reads still work);
    the responses etcd would have given when every one holds what it put, at one
    revision (the write landed: it was the one that filled the quota), else None
    (nothing was written, or it cannot be read now)."""
    from shardroute.etcd import txn

    puts = [op.request_put for op in success if op.HasField("request_put")]
    if not puts:
        return None
    reads = [txn.read(put.key.decode()) for put in puts]
    try:
        return _applied(success, puts, attempt([], reads, timeout)[1])
    except Exception:  # cannot tell now: the NOSPACE answer stands
        return None


def _applied(success: list[Any], puts: list[Any], responses: list[Any]) -> list[Any] | None:
    """The responses etcd would have given our transaction when every key it puts holds
    what it put, at one revision; else None (a delete's count is not known: 0)."""
    import etcd3.etcdrpc as rpc

    revisions = set()
    for put, response in zip(puts, responses, strict=True):
        kvs = response.response_range.kvs
        if len(kvs) != 1 or kvs[0].value != put.value or kvs[0].lease != put.lease:
            return None
        revisions.add(int(kvs[0].mod_revision))
    if len(revisions) != 1:
        return None
    header = rpc.ResponseHeader(revision=revisions.pop())
    return [
        rpc.ResponseOp(response_put=rpc.PutResponse(header=header))
        if op.HasField("request_put")
        else rpc.ResponseOp(response_delete_range=rpc.DeleteRangeResponse(header=header))
        for op in success
    ]
