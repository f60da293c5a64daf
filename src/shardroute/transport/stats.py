"""Counters of a client's calls, by how they were routed and how they ended.

Lock-free and exact: each counter is an ``itertools.count``, whose ``next()`` is a
single atomic step in CPython. The demo, the CLI and telemetry read
:meth:`CallStats.snapshot`.
"""

from __future__ import annotations

import itertools
import threading

__all__ = ["CallStats"]


def _value(counter: itertools.count[int]) -> int:
    # count(n).__reduce__() is (count, (n,)): the next value, i.e. increments so far.
    return int(counter.__reduce__()[1][0])


class CallStats:
    """Counts calls by outcome.

    Keys of :meth:`snapshot`: ``calls`` (finished calls), one key per routing reason
    of the calls that succeeded (``affinity``, ``memo``, ``spill``, ``zone_fallback``,
    ``failover``, ``redirect``), ``failovers`` (calls that succeeded on a fallback after
    a failed attempt), ``redirects`` (redirects followed), ``errors`` (calls that
    raised after routing), ``at_ceiling`` (calls routed past their home because the
    home was at the ceiling of the call's priority: ``Decision.home_at_ceiling``,
    counted when routed) and ``overloaded`` (calls the router refused with
    :class:`~shardroute.errors.Overloaded`: every shard that may take the priority was
    at its ceiling; not in ``calls``, nothing was sent). Zero counts are left out.

    Routing decisions = ``calls`` + ``overloaded``; the share of decisions at a
    priority ceiling = (``at_ceiling`` + ``overloaded``) / decisions
    (:class:`~shardroute.scaling.RouterSignals`). Both are counted only off the common
    path (a spill, a refusal), never per ordinary call.
    """

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()  # only to create a counter the first time
        self._calls = self._counter("calls")
        self._errors = self._counter("errors")
        self._failovers = self._counter("failovers")

    def counter(self, key: str) -> itertools.count[int]:
        """The counter of ``key`` (created at zero): ``next()`` it to count one. For
        callers that count on every call and want no lookup (the clients' hot path)."""
        return self._counter(key)

    def _counter(self, key: str) -> itertools.count[int]:
        counter = self._counters.get(key)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(key, itertools.count())
        return counter

    def succeeded(self, reason: str, failed_over: bool) -> None:
        """Count a call that succeeded, routed for ``reason``."""
        next(self._calls)
        counter = self._counters.get(reason)
        next(counter if counter is not None else self._counter(reason))
        if failed_over:
            next(self._failovers)

    def redirected(self) -> None:
        """Count a redirect followed."""
        next(self._counter("redirects"))

    def at_ceiling(self) -> None:
        """Count a call routed past its home, which was at the priority's ceiling."""
        next(self._counter("at_ceiling"))

    def overloaded(self) -> None:
        """Count a call refused by the router as ``Overloaded``."""
        next(self._counter("overloaded"))

    def failed(self) -> None:
        """Count a call that ended with an error."""
        next(self._calls)
        next(self._errors)

    def snapshot(self) -> dict[str, int]:
        """The non-zero counters now."""
        values = {key: _value(c) for key, c in list(self._counters.items())}
        return {key: n for key, n in values.items() if n}
