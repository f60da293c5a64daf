"""The retry loop of a checkpoint whose store was unreachable (sessions/_save_retry.py):
pure logic, with scripted writes and read-backs."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from shardroute.errors import EtcdNoSpace, EtcdUnavailable, SessionStoreUnavailable, StaleState
from shardroute.sessions._save_retry import CHECKPOINT_MARGIN_S, retry_deadline, save_retrying


def _script(*steps: object) -> tuple[Callable[[], object], list[object]]:
    """A callable answering ``steps`` in order (an exception is raised), and its log."""
    left = list(steps)
    calls: list[object] = []

    def call() -> object:
        step = left.pop(0)
        calls.append(step)
        if isinstance(step, BaseException):
            raise step
        return step

    return call, calls


def _later() -> float:
    return time.monotonic() + 30


def test_a_write_that_landed_before_its_error_is_not_made_again() -> None:
    write, writes = _script(EtcdUnavailable("reply lost"))
    landed, reads = _script(SessionStoreUnavailable("still down"), "saved")
    assert save_retrying(write, landed, _later(), sleep=lambda _: None) == "saved"
    assert len(writes) == 1 and len(reads) == 2


def test_a_write_that_did_not_land_is_sent_again() -> None:
    write, writes = _script(EtcdUnavailable("down"), "saved")
    landed, reads = _script(None)
    assert save_retrying(write, landed, _later(), sleep=lambda _: None) == "saved"
    assert len(writes) == 2 and reads == [None]


def test_a_repeated_write_that_loses_its_compare_reads_back_once_more() -> None:
    # The first attempt landed between the read-back and the repeated write.
    write, _ = _script(EtcdUnavailable("down"), StaleState("lost", "k"))
    landed, reads = _script(None, "saved")
    assert save_retrying(write, landed, _later(), sleep=lambda _: None) == "saved"
    assert reads == [None, "saved"]


def test_another_writer_is_a_stale_state() -> None:
    write, _ = _script(EtcdUnavailable("down"))
    landed, _ = _script(StaleState("another shard wrote", "k"))
    with pytest.raises(StaleState, match="another shard wrote"):
        save_retrying(write, landed, _later(), sleep=lambda _: None)


def test_the_retries_stop_at_the_deadline_with_the_last_error() -> None:
    write, writes = _script(EtcdUnavailable("first"), *[EtcdUnavailable("again")] * 50)
    landed, _ = _script(*[None] * 50)
    slept: list[float] = []
    until = time.monotonic() + 0.3
    with pytest.raises(EtcdUnavailable, match="again"):
        save_retrying(write, landed, until, sleep=lambda s: (slept.append(s), time.sleep(s)))
    assert time.monotonic() >= until
    assert len(writes) >= 2
    assert slept[0] == pytest.approx(0.05) and max(slept) <= 0.3


def test_no_retry_after_the_deadline_or_when_etcd_is_out_of_space() -> None:
    write, writes = _script(EtcdUnavailable("down"))
    with pytest.raises(EtcdUnavailable, match="down"):
        save_retrying(write, lambda: None, time.monotonic() - 1)
    assert len(writes) == 1
    write, writes = _script(EtcdNoSpace("database space exceeded"))
    with pytest.raises(EtcdNoSpace):
        save_retrying(write, lambda: None, _later())
    assert len(writes) == 1


def test_the_retry_deadline_is_the_cap_or_the_rpc_deadline_less_a_margin() -> None:
    assert retry_deadline(100.0, 5.0, None) == 105.0
    assert retry_deadline(100.0, 5.0, 110.0) == 105.0
    assert retry_deadline(100.0, 5.0, 102.0) == 102.0 - CHECKPOINT_MARGIN_S
