"""Send a few turns of one session straight to one chat shard (no routing).

python examples/chat/chat_client.py HOST:PORT SESSION PROMPT [PROMPT ...]
"""

from __future__ import annotations

import sys

import grpc

from shardroute import metadata
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc


def main(address: str, session: str, prompts: list[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        chat = chat_pb2_grpc.ChatStub(channel)
        for prompt in prompts:
            call = chat.Generate(chat_pb2.GenerateRequest(session_key=session, prompt=prompt))
            print("".join(token.text for token in call).strip())
            print("  load:", metadata.get(call.trailing_metadata(), metadata.LOAD))
        history = chat.History(chat_pb2.HistoryRequest(session_key=session))
        print(f"{history.shard_id} holds {history.turns_held} turns of {session!r}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
