"""The routed call when telemetry is active: the client's usual steps plus a
:class:`~shardroute.telemetry.client.CallRecord` (client span, W3C trace context in the
call's metadata, metrics), handed to the shell's recorded loop.

Kept apart from the plain path (``ClientCore.bind``), which stays flat: with no SDK
configured, none of this runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shardroute._validate import seconds
from shardroute.errors import Overloaded
from shardroute.metadata import TURN_ID
from shardroute.session_keys import wire_form
from shardroute.telemetry.client import CallRecord, at_ceiling, overloaded
from shardroute.transport.attempts import first_metadata
from shardroute.transport.methods import MethodSpec

if TYPE_CHECKING:
    from shardroute._core import CallLoop, CallOptions, ClientCore

__all__ = ["recorded_call"]


def recorded_call(core: ClientCore[Any], spec: MethodSpec, run: CallLoop) -> Callable[..., Any]:
    """The recorded form of ``core``'s routed call of ``spec``: ``run`` is the shell's
    recorded loop (it ends the record when the call ends)."""
    telemetry = core.telemetry
    streams = spec.kind == "unary_stream"
    turn_ids = core.turn_ids[streams] if core.turn_ids is not None else None

    def recorded(
        request: Any,
        session_key: str,
        timeout: float | None,
        priority: str,
        idempotent: bool,
        metadata: Sequence[tuple[str, str]],
    ) -> Any:
        wire_form(session_key)  # checks the key: InvalidSessionKey before anything is sent
        timeout = core.timeout if timeout is None else seconds("timeout", timeout)
        started = core.rules.clock()
        try:
            decision = core.route(session_key, priority)
        except Overloaded:
            core.stats.overloaded()
            overloaded(telemetry, priority)
            raise
        if decision.home_at_ceiling:
            core.stats.at_ceiling()
            at_ceiling(telemetry, priority)
        record = CallRecord(telemetry, spec.path, session_key, decision, priority)
        extra = (*metadata, *record.metadata)
        options: CallOptions = (priority, idempotent, extra, record)
        md = first_metadata(session_key, decision, priority, extra)
        if turn_ids is not None:  # last, where ClientCore.failed finds it
            md += ((TURN_ID, turn_ids()),)
        return run(spec, request, session_key, decision, md, timeout, started, options)

    return recorded
