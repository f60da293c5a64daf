"""Server interceptors that count load and attach it to every response's trailers:
:class:`AsyncLoadInterceptor` (written once) and :class:`LoadInterceptor` (generated
from it), plus the sync server's :class:`CountingExecutor` (queue depth)."""

from shardroute.server._async_interceptor import AsyncLoadInterceptor
from shardroute.server._call_accounting import CountingExecutor
from shardroute.server._sync_interceptor import LoadInterceptor

__all__ = ["AsyncLoadInterceptor", "CountingExecutor", "LoadInterceptor"]
