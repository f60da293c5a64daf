"""Chat calls the session tests share: one turn, and the history a shard holds; a chat
shard that records its warm hook's calls."""

from __future__ import annotations

from typing import Any

from shardroute.client import ShardClient
from shardroute.errors import ShardRouteError
from shardroute.examples.chat import ChatShard, chat_pb2, chat_pb2_grpc


class WarmedChat(ChatShard):
    """A chat shard that records its warm hook's calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warmed: list[str] = []

    def warm_session(self, session_key: str, state: Any) -> None:
        self.warmed.append(session_key)


def turn(client: ShardClient, session: str, prompt: str) -> chat_pb2.Token:
    """One chat turn (3 tokens); returns its last token."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=3)
    tokens = list(chat.Generate(request, session_key=session, timeout=15))
    return tokens[-1]


def turn_retried(
    client: ShardClient, session: str, prompt: str, attempts: int = 3
) -> tuple[chat_pb2.Token, int]:
    """One chat turn, retried like an application would when it fails (a refusal during a
    take-over or a move says nothing was executed); returns its last token and the number
    of retries. A retried turn that had in fact been applied shows as a turn number one too
    high and a prompt twice in the history, so callers that check both still see it."""
    for attempt in range(attempts):
        try:
            return turn(client, session, prompt), attempt
        except ShardRouteError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def history(client: ShardClient, session: str) -> list[str]:
    """The prompts of the session's turns, as its shard holds them."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    reply = chat.History(chat_pb2.HistoryRequest(), session_key=session, idempotent=True)
    return [t.prompt for t in reply.turns]
