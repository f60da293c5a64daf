"""A handler's hold on one session for one call: :class:`Turn` (threads) and
:class:`AsyncTurn` (asyncio), made by :meth:`SessionHost.turn
<shardroute.sessions.SessionHost.turn>` / ``aturn``."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from shardroute import metadata
from shardroute.errors import (
    Refused,
)

if TYPE_CHECKING:
    from shardroute.sessions._host_base import _Entry
    from shardroute.sessions.host import SessionHost

__all__ = ["AsyncTurn", "Turn"]

S = TypeVar("S")


def _reason(context: Any) -> str | None:
    return metadata.get(context.invocation_metadata(), metadata.REASON)


def _key(context: Any, session_key: str | None) -> str:
    return session_key or metadata.get(context.invocation_metadata(), metadata.SESSION_KEY) or ""


_NO_KEY = "no session key: pass session_key=, or call through a shardroute client"


def _end_if_begun(host: SessionHost, key: str, begun: asyncio.Future[Any]) -> None:
    """Unlock a session a cancelled call's :meth:`SessionHost.begin` locked after all."""
    if not begun.cancelled() and begun.exception() is None:
        host.end(key, begun.result())


class _TurnBase(Generic[S]):
    def __init__(self, host: SessionHost, context: Any, session_key: str | None) -> None:
        self._host = host
        self._context = context
        self.key = _key(context, session_key)
        self._entry: _Entry | None = None
        self.checkpointed = False

    @property
    def state(self) -> S:
        """The session's state at the start of this turn (treat it as read-only: a new
        state is saved with ``checkpoint``)."""
        if self._entry is None:
            raise RuntimeError("a turn's state is only available inside its 'with' block")
        state: S = self._entry.state
        return state

    @property
    def version(self) -> int:
        """The store version of :attr:`state` (0: never saved)."""
        return 0 if self._entry is None else self._entry.version


class Turn(_TurnBase[Any]):
    """One call's hold on a session (sync). See :meth:`SessionHost.turn`."""

    def __enter__(self) -> Turn:
        if not self.key:
            self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, _NO_KEY)
        try:
            self._entry = self._host.begin(self.key, _reason(self._context))
        except Refused as refused:
            self._abort(refused)
        return self

    def checkpoint(self, new_state: Any, reply: Any = None) -> Any:
        """Save ``new_state`` to the session store before the last reply message is sent;
        returns ``reply`` so the last message goes out only after the save::

            yield session.checkpoint(new_state, reply=last_message)

        On a lost compare-and-swap the call ends with ``ABORTED`` (the local copy is
        dropped); over the store's limit with ``RESOURCE_EXHAUSTED``.
        """
        if self._entry is None:
            raise RuntimeError("checkpoint() outside the turn's 'with' block")
        try:
            self._host.checkpoint(self.key, self._entry, new_state)
        except Refused as refused:
            self._abort(refused)
        self.checkpointed = True
        return reply

    def _abort(self, refused: Refused) -> None:
        if refused.trailers:
            self._context.set_trailing_metadata(refused.trailers)
        self._context.abort(refused.code, refused.details)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._host.end(self.key, entry)


class AsyncTurn(_TurnBase[Any]):
    """One call's hold on a session (asyncio). See :meth:`SessionHost.aturn`; the
    blocking steps run in a worker thread."""

    async def __aenter__(self) -> AsyncTurn:
        if not self.key:
            await self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, _NO_KEY)
        host, key = self._host, self.key
        # On the host's own executor: a call waiting here must not take a thread the
        # in-flight turn's checkpoint (default executor) needs.
        begun = asyncio.get_running_loop().run_in_executor(
            host.executor, host.begin, key, _reason(self._context)
        )
        try:
            self._entry = await asyncio.shield(begun)
        except asyncio.CancelledError:
            # The call went away while waiting; the thread may still lock the session.
            begun.add_done_callback(lambda done: _end_if_begun(host, key, done))
            raise
        except Refused as refused:
            await self._abort(refused)
        return self

    async def checkpoint(self, new_state: Any, reply: Any = None) -> Any:
        """Save ``new_state`` before the last reply message; returns ``reply``
        (see :meth:`Turn.checkpoint`)."""
        if self._entry is None:
            raise RuntimeError("checkpoint() outside the turn's 'async with' block")
        try:
            await asyncio.to_thread(self._host.checkpoint, self.key, self._entry, new_state)
        except Refused as refused:
            await self._abort(refused)
        self.checkpointed = True
        return reply

    async def _abort(self, refused: Refused) -> None:
        await self._context.abort(refused.code, refused.details, trailing_metadata=refused.trailers)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._host.end(self.key, entry)
