"""OverrideStore against a real etcd: create, fence, races, leases, delete."""

from __future__ import annotations

import time
import uuid

import pytest
from concurrency import race

from shardroute.errors import ConfigError, EtcdUnavailable, MalformedRecord, StaleState
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.model import Override
from shardroute.sessions import OverrideStore, next_override
from shardroute.testing.etcd import EtcdServer

pytest_plugins = ["store_fixtures"]  # shared_etcd


@pytest.fixture
def overrides(shared_etcd: EtcdClient) -> OverrideStore:
    return OverrideStore(shared_etcd, f"t{uuid.uuid4().hex[:10]}")


def raw(etcd: EtcdClient, overrides: OverrideStore, session_key: str) -> tuple[bytes, int] | None:
    return etcd.get_with_version(overrides.key(session_key))


def test_create_then_get(overrides: OverrideStore, shared_etcd: EtcdClient) -> None:
    assert overrides.get("s") is None
    stored = overrides.swap("s", None, next_override(None, "a"))
    assert stored is not None and stored.version > 0
    # A first epoch starts above etcd's revision at creation (never repeats after a delete).
    assert 1 < stored.epoch <= stored.version
    assert stored == Override("a", stored.epoch, "", stored.version)
    assert overrides.get("s") == stored
    found = raw(shared_etcd, overrides, "s")
    assert found == (f'{{"epoch":{stored.epoch},"owner":"a"}}'.encode(), stored.version)
    assert overrides.key("s") == f"/shardroute/{overrides.service}/sessions/s"


def test_swaps_increment_the_epoch(overrides: OverrideStore) -> None:
    first = overrides.swap("s", None, next_override(None, "a"))
    assert first is not None
    e = first.epoch
    fenced = overrides.swap("s", first, next_override(first, "a", moving_to="b"))
    assert fenced is not None and (fenced.owner, fenced.epoch, fenced.moving_to) == (
        "a",
        e + 1,
        "b",
    )
    committed = overrides.swap("s", fenced, next_override(fenced, "b"))
    assert committed is not None and (committed.owner, committed.epoch) == ("b", e + 2)
    assert first is not None and first.version < fenced.version < committed.version
    assert overrides.get("s") == committed


def test_stale_swap_raises_and_changes_nothing(
    overrides: OverrideStore, shared_etcd: EtcdClient
) -> None:
    first = overrides.swap("s", None, next_override(None, "a"))
    second = overrides.swap("s", first, next_override(first, "b"))
    before = raw(shared_etcd, overrides, "s")
    assert first is not None
    with pytest.raises(StaleState, match=f"epoch {first.epoch}") as info:
        overrides.swap("s", first, next_override(first, "c"))
    assert info.value.session_key == "s"
    with pytest.raises(StaleState, match="no override"):
        overrides.swap("s", None, next_override(None, "c"))
    with pytest.raises(StaleState):
        overrides.swap("s", first, None)
    assert raw(shared_etcd, overrides, "s") == before
    assert overrides.get("s") == second


def test_swap_from_an_override_that_was_deleted_is_stale(overrides: OverrideStore) -> None:
    first = overrides.swap("s", None, next_override(None, "a"))
    assert overrides.swap("s", first, None) is None
    with pytest.raises(StaleState):
        overrides.swap("s", first, next_override(first, "b"))
    assert overrides.get("s") is None


def test_delete(overrides: OverrideStore) -> None:
    first = overrides.swap("s", None, next_override(None, "a"))
    assert overrides.swap("s", first, None) is None
    assert overrides.get("s") is None
    # expected=None, new=None: "must not exist" holds, nothing to do
    assert overrides.swap("s", None, None) is None


def test_concurrent_swaps_from_the_same_expected_exactly_one_wins(
    overrides: OverrideStore,
) -> None:
    movers = 8
    current = overrides.swap("s", None, next_override(None, "a"))
    assert current is not None
    start = current.epoch
    for _ in range(5):

        def fence(i: int, expected: Override | None = current) -> Override | None:
            return overrides.swap("s", expected, next_override(expected, "a", f"t{i}"))

        wins, stale = race(movers, fence)
        assert len(wins) == 1 and len(stale) == movers - 1
        current = wins[0]
        assert overrides.get("s") == current
    assert current is not None and current.epoch == start + 5


def test_concurrent_creates_exactly_one_wins(overrides: OverrideStore) -> None:
    wins, stale = race(6, lambda i: overrides.swap("s", None, next_override(None, f"s{i}")))
    assert len(wins) == 1 and len(stale) == 5
    assert overrides.get("s") == wins[0]


def test_override_on_a_lease_disappears_when_the_lease_is_revoked(
    overrides: OverrideStore, shared_etcd: EtcdClient
) -> None:
    lease = shared_etcd.grant_lease(30)
    first = overrides.swap("s", None, next_override(None, "a"), lease=lease)
    overrides.swap("other", None, next_override(None, "a"), lease=lease)
    assert first is not None and overrides.get("s") == first
    shared_etcd.revoke_lease(lease)
    assert overrides.get("s") is None
    assert overrides.get("other") is None


def test_swap_without_lease_detaches_from_the_previous_lease(
    overrides: OverrideStore, shared_etcd: EtcdClient
) -> None:
    lease = shared_etcd.grant_lease(30)
    first = overrides.swap("s", None, next_override(None, "a"), lease=lease)
    second = overrides.swap("s", first, next_override(first, "b"))
    shared_etcd.revoke_lease(lease)
    assert overrides.get("s") == second


def test_unknown_or_revoked_lease_is_a_clear_stale_state(
    overrides: OverrideStore, shared_etcd: EtcdClient
) -> None:
    with pytest.raises(StaleState, match="lease 987654321 not found") as info:
        overrides.swap("s", None, next_override(None, "a"), lease=987654321)
    assert info.value.session_key == "s"
    assert overrides.get("s") is None

    lease = shared_etcd.grant_lease(30)
    first = overrides.swap("s", None, next_override(None, "a"))
    shared_etcd.revoke_lease(lease)
    with pytest.raises(StaleState, match=f"lease {lease} not found"):
        overrides.swap("s", first, next_override(first, "b"), lease=lease)
    assert overrides.get("s") == first


def test_expected_without_version_is_a_config_error(overrides: OverrideStore) -> None:
    overrides.swap("s", None, next_override(None, "a"))
    with pytest.raises(ConfigError, match="no version"):
        overrides.swap("s", Override("a", 1), next_override(None, "b"))
    with pytest.raises(ConfigError):
        overrides.swap("t", None, Override("", 1))
    with pytest.raises(ConfigError):
        overrides.swap("t", None, Override("a", 0))
    assert overrides.get("t") is None


def test_malformed_override_value(overrides: OverrideStore, shared_etcd: EtcdClient) -> None:
    shared_etcd.put(overrides.key("s"), b'{"owner": "a"}')
    with pytest.raises(MalformedRecord, match="epoch"):
        overrides.get("s")


def test_override_written_by_hand_is_read(
    overrides: OverrideStore, shared_etcd: EtcdClient
) -> None:
    version = shared_etcd.put(overrides.key("s"), b'{"owner": "x", "epoch": 4, "moving_to": "y"}')
    assert overrides.get("s") == Override("x", 4, "y", version)


def test_etcd_down_raises_etcd_unavailable_fast(etcd_server: EtcdServer) -> None:
    client = EtcdClient(EtcdOptions((etcd_server.endpoint,), timeout=1.0))
    try:
        overrides = OverrideStore(client, "chat")
        first = overrides.swap("s", None, next_override(None, "a"))
        etcd_server.kill()
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            overrides.get("s")
        with pytest.raises(EtcdUnavailable):
            overrides.swap("s", first, next_override(first, "b"))
        assert time.monotonic() - started < 3.0
    finally:
        client.close()


def test_epochs_never_repeat_after_an_override_is_deleted(overrides: OverrideStore) -> None:
    first = overrides.swap("s", None, next_override(None, "a"))
    assert first is not None
    moved = overrides.swap("s", first, next_override(first, "b"))
    assert moved is not None
    overrides.swap("s", moved, None)  # e.g. deleted with its owner's lease
    again = overrides.swap("s", None, next_override(None, "c"))
    assert again is not None and again.epoch > moved.epoch
