"""InFlight: the transport's lock-free count of calls per shard, and its excess."""

from __future__ import annotations

import sys
import threading
from types import MappingProxyType

from shardroute.transport import InFlight


def excess(flight: InFlight, basis: dict[str, int]) -> int:
    return sum(max(0, flight.count(k) - r) for k, r in basis.items())


def test_excess_follows_begin_and_end_relative_to_the_reports() -> None:
    basis = {"a": 3, "b": 0}
    flight = InFlight()
    flight.rebase(MappingProxyType(basis))
    steps = [("a", 2), ("a", 2), ("b", 1), ("c", 5), ("a", -1), ("a", -3), ("b", -1), ("a", -1)]
    for shard_id, n in steps:
        if n > 0:
            flight.begin(shard_id, n)
        else:
            flight.end(shard_id, -n)
        assert flight.excess == excess(flight, basis), (shard_id, n)
    assert flight.count("a") == 0 and flight.count("c") == 5  # "c" counts, no excess: unknown


def test_rebase_recomputes_the_excess() -> None:
    flight = InFlight()
    flight.begin("a", 4)
    assert flight.basis is None and flight.excess == 0
    basis = MappingProxyType({"a": 1})
    flight.rebase(basis)
    assert flight.basis is basis and flight.excess == 3
    flight.rebase(MappingProxyType({"a": 10}))
    assert flight.excess == 0


def test_no_update_is_lost_under_eight_threads() -> None:
    flight = InFlight()
    basis = {f"s{i}": i % 3 for i in range(4)}
    flight.rebase(MappingProxyType(basis))
    peak = {k: 0 for k in basis}
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for i in range(20_000):
            shard_id = f"s{(i + n) % 4}"
            flight.begin(shard_id)
            peak[shard_id] = max(peak[shard_id], flight.count(shard_id))
            flight.end(shard_id)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert all(flight.count(k) == 0 for k in basis)
    assert flight.excess == 0
    assert max(peak.values()) > 1  # the threads did overlap
