"""Slow answers count toward ejection (issue 14), tuned apart from deadline failures:
``OutlierDetector(slow_call_s=..., consecutive_slow=...)``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from shardroute.client import ShardClient
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import ConfigError
from shardroute.model import Shard
from shardroute.transport import ChannelPool, OutlierDetector


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_slow_answers_eject_separately_from_timeouts() -> None:
    clock = Clock()
    detector = OutlierDetector(
        consecutive_timeouts=2, slow_call_s=1.0, consecutive_slow=3, clock=clock
    )
    assert not detector.slow("a")
    assert not detector.timeout("a")  # timeouts count on their own
    assert not detector.slow("a")
    detector.success("a")  # an answer in time resets the slow count too
    assert not detector.slow("a") and not detector.slow("a")
    assert detector.ejected() == frozenset()
    assert detector.slow("a")  # third slow answer in a row
    assert detector.ejected() == {"a"}
    clock.now += 2.01
    assert detector.ejected() == frozenset()
    assert not detector.slow("a")  # the counts started again after the ejection


def test_slow_answers_are_off_by_default_and_validated() -> None:
    assert OutlierDetector().slow_call_s is None
    assert OutlierDetector().consecutive_slow == 5
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="slow_call_s"):
            OutlierDetector(slow_call_s=bad)
    for count in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="consecutive_slow must be an integer >= 1"):
            OutlierDetector(consecutive_slow=count)  # type: ignore[arg-type]


class SteppingClock:
    """Monotonic time that moves by ``step`` seconds on every read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class _Done:
    def trailing_metadata(self) -> Any:
        return ()


class _Channel:
    def unary_unary(self, path: str, **_: Any) -> Any:
        class Echo:  # grpc's unary multi-callable: called, or with_call
            def __call__(self, request: bytes, timeout: float, metadata: Any) -> bytes:
                return request

            def with_call(self, request: bytes, timeout: float, metadata: Any) -> Any:
                return request, _Done()

        return Echo()


def _client(outlier: OutlierDetector, step: float) -> ShardClient:
    source = InMemoryTopologySource("t", [Shard("s0", "s0:1")])
    client = ShardClient(source, timeout=5, outlier=outlier)
    client._core.channels = ChannelPool(lambda shard: _Channel(), lambda channel: None)
    # each call reads the clock at its start and its end: `step` apart
    client._core.rules = replace(client._core.rules, clock=SteppingClock(step))
    return client


class EchoStub:
    def __init__(self, channel: Any) -> None:
        self.Echo = channel.unary_unary("/t.Echo/Echo")


@pytest.mark.parametrize(("step", "ejected"), [(0.5, {"s0"}), (0.05, set())])
def test_a_client_ejects_a_shard_that_answers_slowly(step: float, ejected: set[str]) -> None:
    outlier = OutlierDetector(slow_call_s=0.2, consecutive_slow=3)
    client = _client(outlier, step)
    try:
        echo = client.stub(EchoStub).Echo
        for _ in range(3):
            assert echo(b"x", session_key="k") == b"x"  # a slow answer is still an answer
        assert outlier.ejected() == ejected
    finally:
        client.close()
