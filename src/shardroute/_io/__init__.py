"""Where the asyncio and the threaded code really differ, named and hand-written.

shardroute writes its I/O shells once, for asyncio (modules named ``_async_*.py``), and
``scripts/unasync.py`` generates their threaded twins (``_sync_*.py``) by rewriting
tokens (``async def`` → ``def``, ``await`` → nothing, ``shardroute._io.aio`` →
``shardroute._io.sync``, ``AsyncTurn`` → ``Turn``, ...). What cannot be rewritten token
by token lives here, once per flavour, with the same names: :mod:`.aio` and :mod:`.sync`.
"""
