"""The chat example: a stateful chat shard keeping each session's history in memory.

- :class:`ChatShard` / :class:`AsyncChatShard`: the shard servers (``shardroute.server``).
- ``chat.proto`` next to this file: the ``shardroute.examples.chat.v1.Chat`` service;
  generated code in :mod:`shardroute.examples.chat._proto` (``chat_pb2``,
  ``chat_pb2_grpc.ChatStub`` for callers).

Run one shard: ``shardroute serve shardroute.examples.chat:ChatShard
--etcd 127.0.0.1:2379 --service chat --shard-id s1``. See examples/chat/README.md.
"""

from shardroute.examples.chat._proto import chat_pb2, chat_pb2_grpc
from shardroute.examples.chat.server import CHAT_SERVICE, AsyncChatShard, ChatShard

__all__ = ["CHAT_SERVICE", "AsyncChatShard", "ChatShard", "chat_pb2", "chat_pb2_grpc"]
