"""Failing over between etcd endpoints, the pure part (shardroute.etcd._failover): which
failures mark an endpoint, which calls are tried again, and the error once every
endpoint failed. The same against a real 3-member cluster: test_etcd_cluster.py."""

from __future__ import annotations

import grpc
import pytest
from test_etcd_space_errors import FakeRpcError

from shardroute.errors import ConfigError, EtcdUnavailable
from shardroute.etcd import EtcdOptions
from shardroute.etcd._failover import IDEMPOTENT, UNSENT, Failover, not_run

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
)
THREE = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")


class NoServerAvailableError(Exception):
    """Named like the etcd3 package's: every endpoint failed a moment ago."""


def unavailable(details: str) -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, details)


def deadline() -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class Script:
    """An attempt that fails with the given errors, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.marked = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    def mark(self) -> None:
        self.marked += 1


def test_comma_separated_endpoints_are_split() -> None:
    assert EtcdOptions("127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3").endpoints == THREE
    assert EtcdOptions(("127.0.0.1:1,127.0.0.1:2", "127.0.0.1:3")).endpoints == THREE
    with pytest.raises(ConfigError, match="at least one etcd endpoint"):
        EtcdOptions(" , ")
    with pytest.raises(ConfigError, match="invalid etcd endpoint 'nohost'"):
        EtcdOptions("127.0.0.1:1,nohost")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (unavailable(REFUSED), True),
        (unavailable("etcdserver: no leader"), True),
        (NoServerAvailableError("No endpoint available and not failed"), True),
        (unavailable("Socket closed"), False),  # the request may have reached etcd
        (unavailable("Stream removed (recvmsg:Connection reset by peer)"), False),
        (deadline(), False),
        (FakeRpcError(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"), False),
    ],
    ids=["refused", "no-leader", "none-available", "socket-closed", "reset", "deadline", "lease"],
)
def test_not_run_only_when_etcd_cannot_have_run_the_call(
    error: BaseException, expected: bool
) -> None:
    assert not_run(error) is expected


def test_etcd3_exception_is_judged_by_the_grpc_error_it_replaced() -> None:
    replaced = RuntimeError("etcd connection failed")  # etcd3 raises its own in `except`
    replaced.__context__ = unavailable(REFUSED)
    assert not_run(replaced)


def test_idempotent_call_goes_to_the_next_endpoint_after_any_endpoint_failure() -> None:
    attempt = Script(deadline(), unavailable("Socket closed"))
    assert Failover(THREE, 5.0).call(IDEMPOTENT, attempt, attempt.mark) == "ok"
    assert attempt.calls == 3 and attempt.marked == 2


def test_compare_and_swap_is_retried_only_when_etcd_cannot_have_run_it() -> None:
    refused = Script(unavailable(REFUSED), unavailable("etcdserver: no leader"))
    assert Failover(THREE, 5.0).call(UNSENT, refused, refused.mark) == "ok"
    assert refused.calls == 3
    unknown = Script(deadline())
    with pytest.raises(grpc.RpcError):
        Failover(THREE, 5.0).call(UNSENT, unknown, unknown.mark)
    assert unknown.calls == 1 and unknown.marked == 1  # the endpoint is skipped next time


def test_one_endpoint_is_never_retried() -> None:
    attempt = Script(unavailable(REFUSED))
    with pytest.raises(grpc.RpcError):
        Failover(("127.0.0.1:1",), 5.0).call(IDEMPOTENT, attempt, attempt.mark)
    assert attempt.calls == 1


def test_application_errors_are_not_retried() -> None:
    attempt = Script(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "permission denied"))
    with pytest.raises(grpc.RpcError):
        Failover(THREE, 5.0).call(IDEMPOTENT, attempt, attempt.mark)
    assert attempt.calls == 1 and attempt.marked == 0


def test_every_endpoint_down_for_the_whole_timeout_says_so() -> None:
    attempt = Script(*[unavailable(REFUSED)] * 10_000)
    with pytest.raises(EtcdUnavailable) as caught:
        Failover(THREE, 0.2).call(UNSENT, attempt, attempt.mark)
    message = str(caught.value)
    assert "no etcd endpoint answered within 0.2s" in message
    assert ", ".join(THREE) in message and "Connection refused" in message
    assert "it was not applied" in message and "majority of the etcd members" in message
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    assert attempt.calls > 3
