"""The chat example's shards: a sync :class:`ChatShard` and an asyncio :class:`AsyncChatShard`.

Each keeps every session's conversation in its :class:`~shardroute.server.SessionHost`
(``shard.sessions``) and answers ``Generate`` token by token with a small simulated
compute cost per token (no model), and ``History`` with the turns it holds. The new
history is checkpointed to the session store before the last token goes out, so a
SIGKILLed shard loses no answered turn: the next shard takes the conversation over.
Every reply says how many turns the answering shard holds for the session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio

from shardroute.examples.chat._proto import chat_pb2, chat_pb2_grpc
from shardroute.examples.chat._sessions import (
    CHAT_CODEC,
    compose_reply,
    turn_records,
    with_turn,
)
from shardroute.server import AsyncShardServer, ShardServer, session_key

__all__ = ["CHAT_SERVICE", "AsyncChatShard", "ChatShard"]

CHAT_SERVICE = "shardroute.examples.chat.v1.Chat"
DEFAULT_MAX_TOKENS = 16
_MAX_TOKENS_LIMIT = 4096

_add_chat_servicer: Callable[[Any, Any], None] = chat_pb2_grpc.add_ChatServicer_to_server


def _session_of(request: Any, context: Any) -> str:
    return str(request.session_key or session_key(context) or "")


class ChatShard(ShardServer):
    """A stateful chat shard (threads): history per session, token streaming.

    Args:
        token_delay_s: simulated compute per generated token (default 1 ms).
        **kwargs: :class:`~shardroute.server.ShardServer` arguments (``shard_id``,
            ``service``, ``etcd``, ``zone``, ``session_store``, ...). The session codec
            is the chat's (the turns as JSON).
    """

    def __init__(self, *, token_delay_s: float = 0.001, **kwargs: Any) -> None:
        self.token_delay_s = token_delay_s
        kwargs.setdefault("session_codec", CHAT_CODEC)
        super().__init__(**kwargs)

    def add_services(self, server: grpc.Server) -> None:
        """Add the ``Chat`` service."""
        _add_chat_servicer(_ChatServicer(self), server)

    def health_service_names(self) -> Sequence[str]:
        """The chat service's name, for the health service."""
        return (CHAT_SERVICE,)


class _ChatServicer:
    def __init__(self, shard: ChatShard) -> None:
        self._shard = shard

    def Generate(self, request: Any, context: Any) -> Iterator[Any]:
        key = _session_of(request, context)
        if not key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no session key (field or metadata)")
        shard = self._shard
        with shard.sessions.turn(context, key) as session:
            history = session.state
            turn = len(history) + 1
            max_tokens = min(request.max_tokens or DEFAULT_MAX_TOKENS, _MAX_TOKENS_LIMIT)
            tokens = compose_reply(shard.shard_id, turn, request.prompt, max_tokens)
            for index, text in enumerate(tokens):
                if shard.token_delay_s > 0:
                    time.sleep(shard.token_delay_s)  # simulated compute for one token
                if not context.is_active():
                    return
                token = chat_pb2.Token(
                    text=text, index=index, turn=turn, turns_held=turn, shard_id=shard.shard_id
                )
                if index == len(tokens) - 1:  # saved before the last token goes out
                    reply = "".join(tokens).strip()
                    token = session.checkpoint(with_turn(history, request.prompt, reply), token)
                yield token

    def History(self, request: Any, context: Any) -> Any:
        key = _session_of(request, context)
        if not key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no session key (field or metadata)")
        with self._shard.sessions.turn(context, key) as session:
            return _history_reply(session.state, self._shard.shard_id)


def _history_reply(state: Sequence[Any], shard_id: str) -> Any:
    turns = turn_records(state)
    return chat_pb2.HistoryReply(
        turns=[chat_pb2.Turn(prompt=t.prompt, reply=t.reply) for t in turns],
        shard_id=shard_id,
        turns_held=len(turns),
    )


class AsyncChatShard(AsyncShardServer):
    """The asyncio twin of :class:`ChatShard` (same service, same replies)."""

    def __init__(self, *, token_delay_s: float = 0.001, **kwargs: Any) -> None:
        self.token_delay_s = token_delay_s
        kwargs.setdefault("session_codec", CHAT_CODEC)
        super().__init__(**kwargs)

    def add_services(self, server: grpc.aio.Server) -> None:
        """Add the ``Chat`` service."""
        _add_chat_servicer(_AsyncChatServicer(self), server)

    def health_service_names(self) -> Sequence[str]:
        """The chat service's name, for the health service."""
        return (CHAT_SERVICE,)


class _AsyncChatServicer:
    def __init__(self, shard: AsyncChatShard) -> None:
        self._shard = shard

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        key = _session_of(request, context)
        if not key:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no session key")
        shard = self._shard
        async with shard.sessions.aturn(context, key) as session:
            history = session.state
            turn = len(history) + 1
            max_tokens = min(request.max_tokens or DEFAULT_MAX_TOKENS, _MAX_TOKENS_LIMIT)
            tokens = compose_reply(shard.shard_id, turn, request.prompt, max_tokens)
            for index, text in enumerate(tokens):
                if shard.token_delay_s > 0:
                    await asyncio.sleep(shard.token_delay_s)  # simulated compute for one token
                token = chat_pb2.Token(
                    text=text, index=index, turn=turn, turns_held=turn, shard_id=shard.shard_id
                )
                if index == len(tokens) - 1:  # saved before the last token goes out
                    reply = "".join(tokens).strip()
                    new_state = with_turn(history, request.prompt, reply)
                    token = await session.checkpoint(new_state, token)
                yield token

    async def History(self, request: Any, context: Any) -> Any:
        key = _session_of(request, context)
        if not key:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no session key")
        async with self._shard.sessions.aturn(context, key) as session:
            return _history_reply(session.state, self._shard.shard_id)
