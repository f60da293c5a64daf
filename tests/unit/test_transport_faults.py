"""Pure fault rules (issue 14): timeouts and silent peers eject, a refusal that says
nothing was executed is sent again to the same shard with backoff within the deadline."""

from __future__ import annotations

import itertools

import grpc
import pytest

from shardroute import metadata
from shardroute.errors import CallFailed, Refused
from shardroute.model import Shard
from shardroute.routing import Decision, Reason, Router
from shardroute.transport import (
    Attempts,
    CallRules,
    Failure,
    OutlierDetector,
    RetryPolicy,
    classify,
)
from shardroute.transport.channels import KEEPALIVE_OPTIONS, channel_options
from shardroute.transport.failures import peer_went_silent

U = grpc.StatusCode.UNAVAILABLE
A = grpc.StatusCode.ABORTED
NOT_EXECUTED = ((metadata.NOT_EXECUTED, "1"),)


class Error(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_timeouts_eject_separately_from_failures() -> None:
    clock = Clock()
    detector = OutlierDetector(5, consecutive_timeouts=2, base_ejection_s=2, clock=clock)
    assert not detector.timeout("a")
    detector.success("a")  # resets the timeouts too
    assert not detector.timeout("a")
    assert not detector.failure("a")  # failures count on their own
    assert detector.timeout("a")  # second timeout in a row
    assert detector.ejected() == {"a"}
    clock.now += 2.01
    assert detector.ejected() == frozenset()
    with pytest.raises(Exception, match="consecutive_timeouts"):
        OutlierDetector(consecutive_timeouts=0)


def test_a_silent_peer_is_ejected_at_once_and_deadlines_count() -> None:
    clock = Clock()
    rules = CallRules(RetryPolicy(3), OutlierDetector(clock=clock), Router(), clock=clock)
    silent = Error(U, "Stream removed (ping timeout)")
    assert peer_went_silent(silent) and classify(silent) is Failure.MAYBE_EXECUTED
    plan = _attempts(rules, idempotent=True)
    plan.failed(plan.first(), silent)
    assert rules.outlier.ejected() == {"s0"}
    for _ in range(3):  # consecutive_timeouts defaults to 3
        plan = _attempts(rules, idempotent=True)
        with pytest.raises(Exception, match="deadline"):
            plan.failed(Shard("s1", "h:2"), Error(grpc.StatusCode.DEADLINE_EXCEEDED, ""))
    assert rules.outlier.ejected() == {"s0", "s1"}


def test_refused_before_running_is_sent_again_to_the_same_shard_within_the_deadline() -> None:
    clock = Clock()
    rules = CallRules(RetryPolicy(1), OutlierDetector(clock=clock), Router(), clock=clock)
    refusal = Error(U, "session store unreachable", NOT_EXECUTED)
    assert classify(refusal) is Failure.REFUSED
    assert classify(Error(U, "session store unreachable")) is Failure.MAYBE_EXECUTED
    assert classify(Error(A, "busy", NOT_EXECUTED)) is Failure.REFUSED
    plan = _attempts(rules, idempotent=False, timeout=3.0)
    first = plan.first()
    md = plan.metadata_for(first)
    pauses = []
    shard: Shard | None = first
    with pytest.raises(CallFailed, match="store unreachable"):
        while shard is not None:
            shard = plan.failed(shard, refusal)
            assert shard is first  # the same shard, the same metadata: no failover
            assert plan.metadata_for(shard) == md
            pauses.append(plan.pause)
            clock.now += plan.pause
    assert rules.outlier.ejected() == frozenset()  # a refusal is no failure of the shard
    assert sum(pauses) < 3.0 and len(pauses) >= 5
    assert pauses[0] <= 0.02 and max(pauses) <= 1.0
    assert all(b >= a / 2 for a, b in itertools.pairwise(pauses))


def test_a_shards_own_unavailable_is_its_answer_not_a_lost_connection() -> None:
    load = ((metadata.LOAD, "inflight=1,queue=0,capacity=64"),)
    text = "session store unreachable; turn not saved: failed to connect to all addresses"
    assert classify(Error(U, text)) is Failure.NOT_SENT  # no trailer: the channel's own
    assert classify(Error(U, text, load)) is Failure.APPLICATION  # the shard answered
    assert classify(Error(U, "busy", (*load, *NOT_EXECUTED))) is Failure.REFUSED
    clock = Clock()
    rules = CallRules(RetryPolicy(3), OutlierDetector(clock=clock), Router(), clock=clock)
    plan = _attempts(rules, idempotent=True)
    with pytest.raises(CallFailed, match="store unreachable"):
        plan.failed(plan.first(), Error(U, text, load))
    assert rules.outlier.ejected() == frozenset()  # the shard is fine; etcd is not


def test_refused_trailers() -> None:
    refused = Refused(U, "no topology yet; nothing was executed", not_executed=True)
    assert refused.trailers == NOT_EXECUTED
    moved = Refused(grpc.StatusCode.FAILED_PRECONDITION, "moved", redirect="b")
    assert moved.trailers == ((metadata.REDIRECT, "b"),)


def test_keepalive_channel_options_yield_to_the_clients_own() -> None:
    options = dict(channel_options(1024))
    assert options["grpc.max_send_message_length"] == 1024
    for name, value in KEEPALIVE_OPTIONS:
        assert options[name] == value
    own = channel_options(1024, [("grpc.keepalive_time_ms", 30000)])
    assert [v for k, v in own if k == "grpc.keepalive_time_ms"] == [30000]


def _attempts(rules: CallRules, *, idempotent: bool, timeout: float = 10) -> Attempts:
    shards = [Shard(f"s{i}", f"h:{i + 1}") for i in range(3)]
    decision = Decision(shards[0], tuple(shards[1:]), Reason.AFFINITY, shards[0])
    return Attempts(decision, "k", "/x.Y/Z", "standard", timeout, idempotent, rules)
