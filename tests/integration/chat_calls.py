"""Chat calls the session tests share: one turn, and the history a shard holds."""

from __future__ import annotations

from shardroute.client import ShardClient
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc


def turn(client: ShardClient, session: str, prompt: str) -> chat_pb2.Token:
    """One chat turn (3 tokens); returns its last token."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    request = chat_pb2.GenerateRequest(prompt=prompt, max_tokens=3)
    tokens = list(chat.Generate(request, session_key=session, timeout=15))
    return tokens[-1]


def history(client: ShardClient, session: str) -> list[str]:
    """The prompts of the session's turns, as its shard holds them."""
    chat = client.stub(chat_pb2_grpc.ChatStub)
    reply = chat.History(chat_pb2.HistoryRequest(), session_key=session, idempotent=True)
    return [t.prompt for t in reply.turns]
