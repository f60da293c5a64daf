"""The redis-py boundary of :class:`~shardroute.sessions.redis_store.RedisSessionStore`:
making a client from :class:`RedisOptions`, and translating redis-py's errors into
:class:`~shardroute.errors.SessionStoreUnavailable` once. Imported on first use, so
``shardroute`` imports without the ``redis`` extra."""

from __future__ import annotations

from typing import Any

from shardroute.errors import ConfigError, SessionStoreUnavailable
from shardroute.sessions.redis_options import RedisOptions

__all__ = ["connect", "translate"]


def connect(options: RedisOptions) -> Any:
    """A redis-py client for ``options`` (a ``RedisCluster`` for a cluster, which reads
    the slot map from the first reachable node: I/O)."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigError(
            "the Redis session store needs redis-py: pip install 'shardroute[redis]'"
        ) from exc
    common: dict[str, Any] = {
        "username": options.username,
        "password": options.password,
        "socket_timeout": options.timeout,
        "socket_connect_timeout": options.timeout,
        "client_name": "shardroute",
    }
    if options.tls:
        common.update(
            ssl=True,
            ssl_ca_certs=options.ca_cert,
            ssl_certfile=options.cert_cert,
            ssl_keyfile=options.cert_key,
        )
    if options.cluster:
        nodes = [ClusterNode(host, port) for host, port in options.nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **common)
    ((host, port),) = options.nodes
    # No automatic retry: a write whose reply was lost is reported, not sent again (its
    # compare-and-set would then fail and hide that it happened). A pooled connection
    # that died with a restarted server is replaced when it is taken from the pool.
    return redis.Redis(host=host, port=port, db=options.db, retry=Retry(NoBackoff(), 0), **common)


def translate(exc: BaseException, options: RedisOptions) -> SessionStoreUnavailable | None:
    """The :class:`SessionStoreUnavailable` for a redis-py error (None: not one)."""
    from redis import exceptions as rx

    where = options.redacted()
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
        return SessionStoreUnavailable(
            f"Redis at {where} refused this client's credentials or ACL permissions ({exc}): "
            "nothing was written. Check the user and password, and that the ACL user may "
            "run HGET, HGETALL, HSET, DEL, EXISTS, PEXPIRE, EVAL, EVALSHA, SCRIPT LOAD and "
            "TIME (on a cluster also CLUSTER SLOTS and COMMAND) on the keys of /shardroute/* "
            "(docs/operations.md, 'Redis ACL')"
        )
    if isinstance(exc, rx.OutOfMemoryError):
        return SessionStoreUnavailable(
            f"Redis at {where} is out of memory (maxmemory reached; {exc}): the write was "
            "refused and nothing was written; data already stored is safe. Raise "
            "maxmemory, add shards to the cluster, or end idle sessions (session_ttl_s); "
            "use maxmemory-policy noeviction (docs/operations.md, 'Redis sizing')"
        )
    unreachable = (
        rx.ConnectionError,
        rx.TimeoutError,
        rx.ClusterError,
        rx.RedisClusterException,
        rx.BusyLoadingError,
        rx.ReadOnlyError,
        rx.MasterDownError,
        rx.TryAgainError,
        rx.ClusterDownError,
    )
    if isinstance(exc, unreachable):
        return SessionStoreUnavailable(
            f"the session store (Redis at {where}) is unreachable: {exc or type(exc).__name__}"
        )
    if isinstance(exc, rx.RedisError):
        return SessionStoreUnavailable(f"the session store (Redis at {where}) failed: {exc}")
    return None
