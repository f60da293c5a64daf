"""The client call loops. The asyncio flavour is the source (``_async_calls.py``); the
threaded one (``_sync_calls.py``) is generated from it by ``scripts/unasync.py``.

One loop per call shape, and a recorded form of each (telemetry active: it ends the
call's :class:`~shardroute.telemetry.client.CallRecord`). The first attempt goes to the
decision's shard with no per-call objects; only a failure builds the attempt plan
(:class:`Attempts`), which says where to go next (``ClientCore.failed``). In-flight
counts and the affinity memo are updated by the core, never by the router.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from shardroute import metadata as md_keys
from shardroute._core import PLAIN
from shardroute._io.aio import sleep, trailers_of, unary, unary_with_trailers
from shardroute._validate import seconds
from shardroute.errors import Overloaded
from shardroute.routing import Reason
from shardroute.session_keys import known_wire_form, wire_form
from shardroute.telemetry._setup import METRICS_STATE, TRACE_STATE
from shardroute.transport.attempts import Attempts, Metadata, first_metadata
from shardroute.transport.methods import MethodSpec
from shardroute.transport.recording import recorded_call
from shardroute.transport.turns import is_replay, recorded_reply, turn_id_of

if TYPE_CHECKING:
    from shardroute._core import CallOptions, ClientCore
    from shardroute.routing import Decision

__all__ = ["AsyncCallLoops"]


class AsyncCallLoops:
    """``_unary`` and ``_stream`` of :class:`~shardroute.aio.AsyncShardClient` (a base
    class: it needs the client's ``_core``)."""

    _core: ClientCore[Any]

    def _bind_unary(self, spec: MethodSpec) -> Callable[..., Any]:
        """The routed callable of unary method ``spec``, flat: one closure that routes
        (the steps of ``ClientCore.bind``'s, inline), makes the first attempt, counts it
        in flight and does the success bookkeeping with no Python frame of its own
        besides the router's and the channel pool's: less Python per call, which 8
        threads sharing a client run one at a time (docs/benchmarks.md, session 7: the
        in-place cost of what is left follows the memory it touches). Anything but the
        common case goes to the general code: a
        failed first attempt to :meth:`_unary` (retries, failover, replies of applied
        turns), success with anything to learn or reset to ``ClientCore.succeeded``,
        a shard's first call to ``InFlight.begin``, telemetry to the recorded loop."""
        core = self._core
        recorded = recorded_call(core, spec, self._recorded_unary)
        general = self._unary
        explicit = core.telemetry.explicit
        trace_state, metrics_state = TRACE_STATE, METRICS_STATE
        route = core.router.route
        current = core.source.current
        board = core.loads
        view_for, wall = board.view, board.clock
        ejected = core.outlier.ejected
        health = core._health  # empty until a shard fails: then nothing can be ejected
        inflight = core.inflight
        counts = inflight._counts  # one dict for the client's life (InFlight.begin/end)
        callable_for = core.channels.callable_for
        zone, region, default_timeout = core.zone, core.region, core.timeout
        clock = core.rules.clock
        affinity = Reason.AFFINITY
        at_ceiling = core.stats.counter("at_ceiling")
        refused = core.stats.counter("overloaded")
        calls, by_reason = core._calls, core._by_reason
        by_affinity = by_reason[affinity]
        pins, slow_s, succeeded, settle = core._pins, core._slow_s, core.succeeded, core._settle
        session_header = md_keys.SESSION_KEY
        inf = math.inf
        known = known_wire_form
        turn_ids = core.turn_ids[0] if core.turn_ids is not None else None
        turn_header = md_keys.TURN_ID

        async def call(
            request: Any,
            *,
            session_key: str,
            timeout: float | None = None,
            priority: str = "standard",
            idempotent: bool = False,
            metadata: Sequence[tuple[str, str]] = (),
        ) -> Any:
            # Route: the steps of ClientCore.bind's call, inline (keep them in step).
            if (
                explicit
                or trace_state._TRACER_PROVIDER is not None
                or metrics_state._METER_PROVIDER is not None
            ):
                return await recorded(request, session_key, timeout, priority, idempotent, metadata)
            try:
                wire = known(session_key)
            except TypeError:
                wire = None
            if wire is None:
                wire = wire_form(session_key)  # InvalidSessionKey before anything is sent
            if timeout is None:
                timeout = default_timeout
            elif not 0.0 < timeout < inf:
                seconds("timeout", timeout)
            started = clock()
            now = wall()
            topology = current()
            base, due, view = board.state
            if topology is not base or now >= due:
                view = view_for(topology, now)
            try:
                decision = route(
                    session_key,
                    view,
                    priority=priority,
                    zone=zone,
                    region=region,
                    excluded=ejected() if health else (),
                    loads=inflight,
                )
            except Overloaded:
                next(refused)
                raise
            plain = not (
                metadata or idempotent or priority != "standard" or decision.reason is not affinity
            )
            if plain:  # the common case: one metadata entry (two with turn ids)
                options = PLAIN
                if turn_ids is None:
                    md: Metadata = ((session_header, wire),)
                else:
                    md = ((session_header, wire), (turn_header, turn_ids()))
            else:
                if decision.home_at_ceiling:
                    next(at_ceiling)
                if metadata or idempotent or priority != "standard":
                    options = (priority, idempotent, tuple(metadata), None)
                else:  # only the reason differs: a memo pin, a spill
                    options = PLAIN
                md = first_metadata(session_key, decision, priority, options[2], wire)
                if turn_ids is not None:
                    md += ((turn_header, turn_ids()),)
            # The first attempt (the general loop's, inline).
            shard = decision.shard
            shard_id = shard.id
            method = callable_for(shard, spec)
            inbox = board.inbox
            try:  # InFlight.begin, inline for one call (a shard's first call: the method)
                counts[shard_id] = c = counts[shard_id] + 1
            except KeyError:
                inflight.begin(shard_id)
            else:
                t = inflight._thresholds.get(shard_id)
                if t is not None and c > t:
                    inflight.excess += 1
            try:
                if shard_id in inbox:
                    trailers = None
                    response = await method(request, timeout=timeout, metadata=md)
                else:
                    response, trailers = await unary_with_trailers(method, request, timeout, md)
            except grpc.RpcError as error:
                inflight.end(shard_id)
                return await general(
                    spec, request, session_key, decision, md, timeout, started, options, error
                )
            except BaseException:
                inflight.end(shard_id)
                raise
            # InFlight.end, inline for one call (an update no thread switch can split)
            try:
                counts[shard_id] = (x - 1) if (x := counts[shard_id]) > 1 else 0
            except KeyError:  # (InFlight.end ignores an unknown shard too)
                x = 0
            t = inflight._thresholds.get(shard_id)
            if t is not None and x > t:
                inflight.excess -= 1
            if trailers is not None:
                inbox[shard_id] = trailers
            if slow_s is not None or health:  # something to time or reset
                succeeded(None, session_key, decision, shard, started)
            elif decision.reason is affinity and session_key not in pins:  # nothing to learn
                next(calls)
                next(by_affinity)
            else:  # ClientCore.succeeded with nothing to time or reset: count, learn
                next(calls)
                next(by_reason[decision.reason])
                settle(session_key, decision)
            return response

        call.__name__ = spec.name
        call.__doc__ = f"Call {spec.path} on the shard serving ``session_key``."
        return call

    async def _unary(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
        failed: grpc.RpcError | None = None,
    ) -> Any:
        """The general unary loop: every attempt of a call, failover included.
        ``failed``: the first attempt was made already (by the flat path of
        :meth:`_bind_unary`) and failed with it; the loop takes over from there."""
        core = self._core
        channels, inflight, board = core.channels, core.inflight, core.loads
        shard = decision.shard
        attempts: Attempts | None = None  # built only if an attempt fails
        while True:
            shard_id = shard.id
            if failed is None:
                method = channels.callable_for(shard, spec)
                inbox = board.inbox  # trailers heard since the board's last merge
                inflight.begin(shard_id)
                try:
                    if shard_id in inbox:  # heard from since that merge: no trailers wanted
                        trailers = None
                        response = await unary(method, request, timeout, md)
                    else:  # the first call to the shard since that merge: its load trailer
                        response, trailers = await unary_with_trailers(method, request, timeout, md)
                except grpc.RpcError as error:
                    inflight.end(shard_id)
                    failed = error
                except BaseException:
                    inflight.end(shard_id)
                    raise
                else:
                    inflight.end(shard_id)
                    if trailers is not None:
                        inbox[shard_id] = trailers  # parsed and merged later (LoadBoard)
                    core.succeeded(attempts, session_key, decision, shard, started)
                    return response
            if is_replay(failed):  # a retried turn the session applied: its recorded reply
                core.succeeded(attempts, session_key, decision, shard)
                return recorded_reply(spec, failed, shard_id, turn_id_of(md) or "")
            attempts, shard, timeout, md = core.failed(
                attempts, spec, session_key, decision, started, timeout, options, shard, failed, md
            )
            failed = None
            if attempts.pause:  # the shard refused it before running it: again, later
                await sleep(attempts.pause)
                timeout = attempts.timeout()

    async def _stream(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> AsyncIterator[Any]:
        core = self._core
        channels, inflight, board = core.channels, core.inflight, core.loads
        shard = decision.shard
        attempts: Attempts | None = None  # built only if an attempt fails
        received = False
        while True:
            shard_id = shard.id
            method = channels.callable_for(shard, spec)
            inflight.begin(shard_id)
            call = None
            failed: grpc.RpcError | None = None
            try:
                call = method(request, timeout=timeout, metadata=md)
                async for message in call:
                    received = True
                    yield message
            except grpc.RpcError as error:
                failed = error
            finally:
                inflight.end(shard_id)
                if call is not None:
                    call.cancel()  # no-op when finished; stops it if the caller stopped early
            if failed is None:
                if call is not None and shard_id not in (inbox := board.inbox):
                    inbox[shard_id] = await trailers_of(call)
                core.succeeded(attempts, session_key, decision, shard)
                return
            if is_replay(failed):  # applied already: a stream's replies are not kept
                core.succeeded(attempts, session_key, decision, shard)
                recorded_reply(spec, failed, shard_id, turn_id_of(md) or "")
            attempts, shard, timeout, md = core.failed(
                attempts,
                spec,
                session_key,
                decision,
                started,
                timeout,
                options,
                shard,
                failed,
                md,
                received,
            )
            if attempts.pause:
                await sleep(attempts.pause)
                timeout = attempts.timeout()

    async def _recorded_unary(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> Any:
        record = options[3]
        assert record is not None
        try:
            response = await self._unary(
                spec, request, session_key, decision, md, timeout, started, options
            )
        except BaseException as error:
            record.finish(error)
            raise
        record.finish()
        return response

    async def _recorded_stream(
        self,
        spec: MethodSpec,
        request: Any,
        session_key: str,
        decision: Decision,
        md: Metadata,
        timeout: float,
        started: float,
        options: CallOptions,
    ) -> AsyncIterator[Any]:
        record = options[3]
        assert record is not None
        error: BaseException | None = None
        try:
            async for message in self._stream(
                spec, request, session_key, decision, md, timeout, started, options
            ):
                yield message
        except BaseException as failed:
            error = failed
            raise
        finally:
            record.finish(error)
