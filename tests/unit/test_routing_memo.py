"""AffinityMemo: bounded size (LRU), sliding TTL with an injected clock, no sleeps."""

from __future__ import annotations

from shardroute.routing import AffinityMemo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_put_get_discard() -> None:
    memo = AffinityMemo(10, 60, Clock())
    assert memo.get("a") is None
    memo.put("a", "s1")
    memo.put("a", "s2")
    assert memo.get("a") == "s2" and "a" in memo and len(memo) == 1
    memo.discard("a")
    memo.discard("never")
    assert memo.get("a") is None and len(memo) == 0


def test_discard_if_only_drops_the_matching_pin() -> None:
    memo = AffinityMemo(10, 60, Clock())
    memo.put("a", "s1")
    memo.discard_if("a", "s2")
    assert memo.get("a") == "s1"
    memo.discard_if("a", "s1")
    assert memo.get("a") is None


def test_entries_expire_after_ttl_without_use() -> None:
    clock = Clock()
    memo = AffinityMemo(10, 60, clock)
    memo.put("a", "s1")
    clock.now += 59.9
    assert memo.get("a") == "s1"  # refreshed: past half its TTL
    clock.now += 59.9
    assert memo.get("a") == "s1"  # still alive: it was used
    clock.now += 60.0
    assert memo.get("a") is None
    assert len(memo) == 0 and memo.items() == []


def test_use_before_half_ttl_does_not_extend() -> None:
    clock = Clock()
    memo = AffinityMemo(10, 60, clock)
    memo.put("a", "s1")
    clock.now += 10
    assert memo.get("a") == "s1"
    clock.now += 50
    assert memo.get("a") is None


def test_size_bound_evicts_least_recently_refreshed() -> None:
    clock = Clock()
    memo = AffinityMemo(3, 60, clock)
    for key in "abc":
        memo.put(key, "s-" + key)
        clock.now += 1
    memo.put("a", "s-a2")  # refresh a: b is now the oldest
    memo.put("d", "s-d")
    assert memo.get("b") is None
    assert [k for k, _ in memo.items()] == ["c", "a", "d"]
    assert len(memo._index) == 3  # the lock-free mirror never outgrows the cache


def test_mirror_follows_expiry_on_insert() -> None:
    clock = Clock()
    memo = AffinityMemo(100, 10, clock)
    for i in range(50):
        memo.put(f"k{i}", "s")
    clock.now += 11
    memo.put("fresh", "s")  # TTLCache expires the old entries on insert
    assert list(memo._index) == ["fresh"]
