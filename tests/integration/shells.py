"""Drive a sync ShardServer or an AsyncShardServer (on an event loop of its own thread)
through one blocking interface, so one test body runs against both shells."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from shardroute.examples.chat import AsyncChatShard, ChatShard
from shardroute.server import ServerState

KINDS = ("sync", "asyncio")

CHAT_CLASSES = {
    "sync": "shardroute.examples.chat:ChatShard",
    "asyncio": "shardroute.examples.chat:AsyncChatShard",
}
"""The chat shard class of each shell, for ``ShardCluster(server_class=...)``."""


class Shell:
    """One shard server, sync or asyncio, behind one blocking interface."""

    def __init__(self, kind: str, *, cls: Any = None, **kwargs: Any) -> None:
        self.kind = kind
        self._loop: asyncio.AbstractEventLoop | None = None
        if kind == "sync":
            self.server: Any = (cls or ChatShard)(**kwargs)
        else:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True).start()
            self.server = self.run(_construct(cls or AsyncChatShard, kwargs))

    def run(self, call: Any) -> Any:
        if self._loop is None:
            return call
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(60)

    def do(self, name: str, *args: Any) -> Any:
        method = getattr(self.server, name)
        return method(*args) if self._loop is None else self.run(method(*args))

    def begin_drain(self, grace: float) -> None:
        if self._loop is None:
            self.server.begin_drain(grace)
        else:
            self._loop.call_soon_threadsafe(self.server.begin_drain, grace)

    def start(self) -> Shell:
        """Start the server; returns the shell (``with Shell(...).start() as shell:``)."""
        self.do("start")
        return self

    def in_thread(self, name: str, *args: Any) -> threading.Thread:
        """Call the server's ``name`` from a thread of its own (a drain that blocks)."""
        thread = threading.Thread(target=self.do, args=(name, *args), daemon=True)
        thread.start()
        return thread

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.server.state is not ServerState.CREATED:
            self.do("stop")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


async def _construct(cls: Any, kwargs: dict[str, Any]) -> Any:
    return cls(**kwargs)
