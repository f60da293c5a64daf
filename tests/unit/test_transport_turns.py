"""Turn ids on the client (pure): ids, the retry rule of an unknown outcome, the same
id on every attempt, and a shard's "applied already" answer read back as the reply."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from shardroute import metadata
from shardroute.errors import OutcomeUnknown, TurnAlreadyApplied
from shardroute.model import Shard
from shardroute.routing import Decision, Reason, Router
from shardroute.sessions.applied import check_turn_id
from shardroute.transport import Attempts, CallRules, Failure, OutlierDetector, RetryPolicy
from shardroute.transport.methods import MethodSpec
from shardroute.transport.turns import STREAM, is_replay, recorded_reply, turn_id_of, turn_ids

U = grpc.StatusCode.UNAVAILABLE


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        self._code, self._details, self._trailers = code, details, tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def _attempts(exactly_once: bool, turn_id: str | None) -> Attempts:
    shards = [Shard(f"s{i}", f"h:{i + 1}") for i in range(3)]
    decision = Decision(shards[0], tuple(shards[1:]), Reason.AFFINITY, shards[0])
    rules = CallRules(RetryPolicy(3, exactly_once=exactly_once), OutlierDetector(), Router())
    return Attempts(decision, "k", "/x.Y/Z", "standard", 10.0, False, rules, turn_id=turn_id)


def test_turn_ids_are_unique_valid_and_cheap_to_read_back() -> None:
    (unary, stream), (other, _) = turn_ids(), turn_ids()
    ids = [unary() for _ in range(1000)] + [other() for _ in range(1000)]
    streamed = [stream() for _ in range(10)]
    assert all(turn_id.endswith(STREAM) for turn_id in streamed)
    ids += [turn_id.removesuffix(STREAM) for turn_id in streamed]  # one counter for both
    assert len(set(ids)) == 2010
    assert all(check_turn_id(turn_id) == turn_id for turn_id in ids)
    md = ((metadata.SESSION_KEY, "k"), (metadata.TURN_ID, ids[0]))
    assert turn_id_of(md) == ids[0]
    assert turn_id_of(md[:1]) is None


def test_unknown_outcome_is_retried_under_its_turn_id() -> None:
    policy = RetryPolicy(3, exactly_once=True)
    assert policy.should_retry(Failure.MAYBE_EXECUTED, attempt=1, idempotent=False, turn=True)
    assert not policy.should_retry(Failure.MAYBE_EXECUTED, attempt=1, idempotent=False)
    assert not RetryPolicy(3).should_retry(
        Failure.MAYBE_EXECUTED, attempt=1, idempotent=False, turn=True
    )
    plan = _attempts(True, "abc.1")
    first = plan.first()
    assert dict(plan.metadata_for(first))[metadata.TURN_ID] == "abc.1"
    second = plan.failed(first, FakeRpcError(U, "Socket closed"))
    assert second is not None and second.id == "s1"
    sent = dict(plan.metadata_for(second))
    assert sent[metadata.TURN_ID] == "abc.1"  # the same id on the retry
    assert sent[metadata.REASON] == "failover"


def test_without_exactly_once_or_a_turn_id_the_old_rule_holds() -> None:
    for plan in (_attempts(False, "abc.1"), _attempts(True, None)):
        with pytest.raises(OutcomeUnknown, match="not marked idempotent"):
            plan.failed(plan.first(), FakeRpcError(U, "Socket closed"))


def _spec(kind: str = "unary_unary") -> MethodSpec:
    return MethodSpec("Add", "/counter.Counter/Add", kind, None, lambda raw: raw.decode())


def test_a_replay_answers_with_the_recorded_reply() -> None:
    trailers = ((metadata.TURN_APPLIED, "1"), (metadata.TURN_REPLY, b"\x00total=3"))
    replay = FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "applied already", trailers)
    assert is_replay(replay)
    assert recorded_reply(_spec(), replay, "s1", "abc.1") == "total=3"
    assert not is_replay(FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "app's own"))
    assert not is_replay(FakeRpcError(U, "x", trailers))


def test_a_replay_without_its_reply_says_applied_already() -> None:
    applied = FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "", ((metadata.TURN_APPLIED, "1"),))
    with pytest.raises(TurnAlreadyApplied, match="applied already, exactly once") as info:
        recorded_reply(_spec(), applied, "s1", "abc.1")
    assert (info.value.turn_id, info.value.shard_id) == ("abc.1", "s1")
    trailers = ((metadata.TURN_APPLIED, "1"), (metadata.TURN_REPLY, b"\x00x"))
    stream = FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "", trailers)
    with pytest.raises(TurnAlreadyApplied):
        recorded_reply(_spec("unary_stream"), stream, "s1", "abc.1")
