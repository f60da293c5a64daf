"""A handler's hold on one session for one call. The asyncio flavour is the source
(``_async_turn.py``); the threaded one (``_sync_turn.py``) is generated from it by
``scripts/unasync.py``; where the two differ lives in :mod:`shardroute._io`."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import grpc

from shardroute._io.aio import run_blocking, run_waiting
from shardroute.errors import Refused
from shardroute.sessions._turn_base import TurnBase, call_deadline, call_reason, reply_bytes
from shardroute.sessions.applied import AppliedTurn, replay_trailers

__all__ = ["AsyncTurn"]


class AsyncTurn(TurnBase[Any]):
    """One call's hold on a session. See :meth:`SessionHost.aturn
    <shardroute.sessions.SessionHost.aturn>`."""

    async def __aenter__(self) -> AsyncTurn:
        if not self.key:
            await self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.key_problem)
        host, key = self._host, self.key
        try:
            # On the host's own executor: a call waiting for a busy or moving session must
            # not take a thread the in-flight turn's checkpoint needs.
            self._entry = await run_waiting(
                lambda: host.executor,
                host.begin,
                key,
                call_reason(self._context),
                undo=lambda entry: host.end(key, entry),
            )
        except Refused as refused:
            refused.not_executed = True  # refused on entry: the handler never ran
            await self._abort(refused)
        turn_id = self.turn_id
        applied = None if turn_id is None else host.replay(self._entry, turn_id)
        if applied is not None:  # applied already (a retry): answer from the record
            await self._abort(
                Refused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"turn {turn_id} of session {key!r} was applied already; answered from "
                    "the record of applied turns, not run again",
                    extra_trailers=replay_trailers(applied),
                )
            )
        return self

    async def checkpoint(self, new_state: Any, reply: Any = None) -> Any:
        """Save ``new_state`` to the session store before the last reply message is sent;
        returns ``reply`` so the last message goes out only after the save::

            yield await session.checkpoint(new_state, reply=last_message)

        With the call's turn id, the same write records the turn as applied, with
        ``reply``'s bytes (a protobuf message or bytes, up to the host's
        ``turn_memory.max_reply_bytes``): a retry of the call is answered with them.

        While the store is unreachable the save is retried for up to the host's
        ``checkpoint_retry_s``, ending before the call's deadline; then the call ends
        with ``UNAVAILABLE`` (the turn not saved). On a lost compare-and-swap it ends
        with ``ABORTED`` (the local copy is dropped); over the store's limit with
        ``RESOURCE_EXHAUSTED``.
        """
        if self._entry is None:
            raise RuntimeError("checkpoint() outside the turn's 'with' block")
        try:
            turn_id = self.turn_id
            kept = None if self.streams else reply_bytes(reply)
            turn = None if turn_id is None else AppliedTurn(turn_id, kept)
            deadline = call_deadline(self._context)
            checkpoint = self._host.checkpoint
            await run_blocking(checkpoint, self.key, self._entry, new_state, turn, deadline)
        except Refused as refused:
            await self._abort(refused)
        self.checkpointed = True
        return reply

    async def _abort(self, refused: Refused) -> None:
        # The turn ends before the refusal goes out: asyncio sends the status at once,
        # so whoever reads it (a retry, a test) finds the session already settled.
        entry, self._entry = self._entry, None
        if entry is not None:
            self._host.end(self.key, entry)
        if refused.trailers:
            self._context.set_trailing_metadata(refused.trailers)
        await self._context.abort(refused.code, refused.details)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._host.end(self.key, entry)
