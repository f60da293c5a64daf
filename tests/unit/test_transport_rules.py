"""Pure failover rules: classification, retry decisions, outlier ejection, attempt plans."""

from __future__ import annotations

import grpc
import pytest

from shardroute.errors import (
    CallFailed,
    DeadlineExceeded,
    OutcomeUnknown,
    PayloadTooLarge,
    ShardUnavailable,
    UnknownMethod,
)
from shardroute.model import Shard
from shardroute.routing import Decision, Reason
from shardroute.transport import Attempts, Failure, OutlierDetector, RetryPolicy, classify
from shardroute.transport.methods import describe_stub


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


U = grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("code", "details", "failure"),
    [
        (U, "failed to connect to all addresses; last error: Connection refused", "not_sent"),
        (U, "DNS resolution failed for nowhere:1", "not_sent"),
        (U, "Socket closed", "maybe_executed"),
        (U, "Connection reset by peer", "maybe_executed"),
        (grpc.StatusCode.INTERNAL, "Stream removed", "maybe_executed"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "deadline"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", "too_large"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", "application"),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", "unimplemented"),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad", "application"),
        (grpc.StatusCode.CANCELLED, "Locally cancelled by application!", "application"),
        (grpc.StatusCode.CANCELLED, "Channel closed!", "maybe_executed"),
    ],
)
def test_classify(code: grpc.StatusCode, details: str, failure: str) -> None:
    assert classify(FakeRpcError(code, details)).value == failure


def test_retry_policy_decisions() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(Failure.NOT_SENT, attempt=1, idempotent=False)
    assert not policy.should_retry(Failure.MAYBE_EXECUTED, attempt=1, idempotent=False)
    assert policy.should_retry(Failure.MAYBE_EXECUTED, attempt=2, idempotent=True)
    assert not policy.should_retry(
        Failure.MAYBE_EXECUTED, attempt=1, idempotent=True, received=True
    )
    assert not policy.should_retry(Failure.NOT_SENT, attempt=3, idempotent=True)
    for failure in (Failure.DEADLINE, Failure.APPLICATION, Failure.TOO_LARGE):
        assert not policy.should_retry(failure, attempt=1, idempotent=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outlier_ejection_backoff_and_recovery() -> None:
    clock = Clock()
    detector = OutlierDetector(3, base_ejection_s=2, max_ejection_s=5, clock=clock)
    assert not detector.failure("a") and not detector.failure("a")
    detector.success("a")  # resets the streak
    assert not detector.failure("a") and not detector.failure("a")
    assert detector.failure("a")  # third in a row
    assert detector.ejected() == {"a"}
    clock.now += 2.01
    assert detector.ejected() == frozenset()
    assert detector.failure("a", unreachable=True)  # unreachable: at once, 4 s now
    clock.now += 3.9
    assert detector.ejected() == {"a"}
    clock.now += 0.2
    assert detector.ejected() == frozenset()
    assert detector.failure("a", unreachable=True)
    clock.now += 5.01  # capped at max_ejection_s
    assert detector.ejected() == frozenset()
    detector.failure("b", unreachable=True)
    detector.forget("b")
    assert detector.ejected() == frozenset()


def _attempts(idempotent: bool, clock: Clock, n: int = 3, timeout: float = 10) -> Attempts:
    shards = [Shard(f"s{i}", f"h:{i + 1}") for i in range(n)]
    decision = Decision(shards[0], tuple(shards[1:]), Reason.AFFINITY, shards[0])
    from shardroute.routing import Router
    from shardroute.transport import CallRules

    rules = CallRules(RetryPolicy(3), OutlierDetector(clock=clock), Router(), clock=clock)
    return Attempts(decision, "k", "/x.Y/Z", "standard", timeout, idempotent, rules)


def test_attempts_move_on_only_when_allowed() -> None:
    clock = Clock()
    plan = _attempts(False, clock)
    first = plan.first()
    assert dict(plan.metadata_for(first)) == {"x-shardroute-session": "k"}
    second = plan.failed(first, FakeRpcError(U, "failed to connect"))
    assert second is not None and second.id == "s1" and plan.failed_over
    assert dict(plan.metadata_for(second))["x-shardroute-reason"] == "failover"
    assert dict(plan.metadata_for(second))["x-shardroute-shard"] == "s1"
    with pytest.raises(OutcomeUnknown, match="not marked idempotent"):
        plan.failed(second, FakeRpcError(U, "Socket closed"))


def test_attempts_exhausted_and_errors_translated() -> None:
    clock = Clock()
    plan = _attempts(True, clock)
    shards = []
    shard: Shard | None = plan.first()
    with pytest.raises(ShardUnavailable) as info:
        while shard is not None:
            shards.append(shard)
            shard = plan.failed(shard, FakeRpcError(U, "failed to connect"))
    assert len(shards) == 3
    assert info.value.tried == ("s0", "s1", "s2")
    for code, details, error in [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max", PayloadTooLarge),
        (grpc.StatusCode.UNIMPLEMENTED, "", UnknownMethod),
        (grpc.StatusCode.NOT_FOUND, "no such session", CallFailed),
    ]:
        with pytest.raises(error):
            _attempts(True, clock).failed(shards[0], FakeRpcError(code, details))


def test_attempt_timeout_counts_down_and_expires() -> None:
    clock = Clock()
    plan = _attempts(True, clock, timeout=1.0)
    shard = plan.first()
    clock.now += 0.25
    assert plan.timeout() == pytest.approx(0.75)
    clock.now += 1
    with pytest.raises(DeadlineExceeded, match=r"after 1 attempt\(s\)"):
        plan.timeout()
    assert shard.id == "s0"


def test_describe_stub_rejects_non_stubs() -> None:
    from shardroute.errors import ConfigError

    class NotAStub:
        def __init__(self, channel: object) -> None:
            pass

    with pytest.raises(ConfigError, match="no gRPC methods"):
        describe_stub(NotAStub)
    with pytest.raises(ConfigError, match="not a generated gRPC stub"):
        describe_stub(int)


def test_no_fallbacks_left_returns_none() -> None:
    plan = _attempts(True, Clock(), n=2)
    first = plan.first()
    second = plan.failed(first, FakeRpcError(U, "failed to connect"))
    assert second is not None and second.id == "s1"
    assert plan.failed(second, FakeRpcError(U, "Socket closed")) is None  # idempotent: go on
    assert plan.exhausted().tried == ("s0", "s1")
