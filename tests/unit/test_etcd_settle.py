"""Settling a compare-and-swap write whose outcome is unknown (shardroute.etcd._resolve):
applied once, or reported as it is; never applied twice, never a false conflict."""

from __future__ import annotations

import time
from typing import Any

import etcd3.etcdrpc as rpc
import grpc
import pytest
from etcd3.etcdrpc import kv_pb2
from test_etcd_space_errors import FakeRpcError

from shardroute.etcd import txn
from shardroute.etcd._resolve import can_settle, settle

KEY = "/shardroute/chat/sessions/s1/7"
OURS = b"turn 7"
COMPARE = [txn.compare(KEY, "create_revision", "EQUAL", 0)]
SUCCESS = [txn.put(KEY, OURS, 42)]


def held(value: bytes, revision: int, lease: int = 42) -> list[Any]:
    kv = kv_pb2.KeyValue(key=KEY.encode(), value=value, mod_revision=revision, lease=lease)
    return [rpc.ResponseOp(response_range=rpc.RangeResponse(kvs=[kv]))]


class Etcd:
    """Answers each transaction from a script: reads (no compare) and writes apart."""

    def __init__(self, reads: list[Any], writes: list[Any] = ()) -> None:  # type: ignore[assignment]
        self.reads, self.writes = list(reads), list(writes)
        self.sent: list[str] = []
        self.failed = 0

    def attempt(self, compare: list[Any], success: list[Any], timeout: float) -> Any:
        assert timeout > 0
        kind = "write" if compare else "read"
        self.sent.append(kind)
        answer = (self.writes if compare else self.reads).pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def mark(self) -> None:
        self.failed += 1


def run(etcd: Etcd) -> tuple[bool, list[Any]] | None:
    return settle(etcd.attempt, etcd.mark, COMPARE, SUCCESS, time.monotonic() + 2.0, 1.0)


def test_a_write_that_was_applied_is_answered_as_applied_without_sending_it_again() -> None:
    etcd = Etcd([(True, held(OURS, 17))])
    result = run(etcd)
    assert result is not None and result[0] is True
    assert result[1][0].response_put.header.revision == 17
    assert etcd.sent == ["read"]


def test_a_fold_that_was_applied_answers_for_its_delete_and_its_put() -> None:
    fold = [txn.delete(KEY + "/", KEY + "0"), *SUCCESS]
    etcd = Etcd([(True, held(OURS, 22))])
    result = settle(etcd.attempt, etcd.mark, COMPARE, fold, time.monotonic() + 2.0, 1.0)
    assert result is not None and result[0] is True
    assert result[1][0].HasField("response_delete_range")
    assert result[1][-1].response_put.header.revision == 22


def test_a_lost_write_is_sent_again_and_applied_once() -> None:
    applied = (True, [rpc.ResponseOp(response_put=rpc.PutResponse())])
    etcd = Etcd([(True, [rpc.ResponseOp(response_range=rpc.RangeResponse())])], [applied])
    assert run(etcd) == applied
    assert etcd.sent == ["read", "write"]


def test_a_write_that_lands_late_is_not_taken_for_a_conflict() -> None:
    missing = (True, [rpc.ResponseOp(response_range=rpc.RangeResponse())])
    etcd = Etcd([missing, (True, held(OURS, 18))], [(False, [])])
    result = run(etcd)
    assert result is not None and result[0] is True
    assert result[1][0].response_put.header.revision == 18
    assert etcd.sent == ["read", "write", "read"]


def test_someone_elses_write_stays_a_failed_compare() -> None:
    theirs = (True, held(b"another shard's turn 7", 19))
    etcd = Etcd([theirs, theirs], [(False, [])])
    assert run(etcd) == (False, [])


def test_a_member_failing_while_settling_is_skipped() -> None:
    gone = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    etcd = Etcd([gone, (True, held(OURS, 20))])
    result = run(etcd)
    assert result is not None and result[0] is True and etcd.failed == 1


def test_every_member_failed_a_moment_ago_is_waited_out() -> None:
    class NoServerAvailableError(Exception):
        """Named like the etcd3 package's."""

    etcd = Etcd([NoServerAvailableError("No endpoint available"), (True, held(OURS, 21))])
    result = run(etcd)
    assert result is not None and result[0] is True and etcd.failed == 0


def test_not_settled_in_time_is_none() -> None:
    slow = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    etcd = Etcd([slow] * 1000)
    assert settle(etcd.attempt, etcd.mark, COMPARE, SUCCESS, time.monotonic() + 0.1, 1.0) is None


@pytest.mark.parametrize(
    ("error", "compare", "success", "expected"),
    [
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), COMPARE, SUCCESS, True),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"), COMPARE, SUCCESS, True),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Connection refused"), COMPARE, SUCCESS, False),
        (FakeRpcError(grpc.StatusCode.NOT_FOUND, "lease not found"), COMPARE, SUCCESS, False),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), [], SUCCESS, False),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), COMPARE, [txn.delete(KEY)], False),
        (
            FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"),
            COMPARE,
            [txn.delete(KEY + "/", KEY + "0"), *SUCCESS],
            True,
        ),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), COMPARE, [txn.read(KEY)], False),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), COMPARE, [], False),
    ],
    ids=[
        "deadline",
        "reset",
        "refused",
        "lease",
        "no-compare",
        "delete",
        "fold",
        "read",
        "nothing",
    ],
)
def test_only_compare_and_put_transactions_with_an_unknown_outcome_are_settled(
    error: BaseException, compare: list[Any], success: list[Any], expected: bool
) -> None:
    assert can_settle(error, compare, success) is expected
