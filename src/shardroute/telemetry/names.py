"""Every OpenTelemetry name shardroute uses: instruments, attributes, spans, events and
loggers. The rest of the library refers to these constants, never to a string literal
(docs/observability.md has the table).

Names follow the OpenTelemetry semantic conventions where one exists (the RPC
conventions: ``rpc.system``, ``rpc.service``, ``rpc.method``, ``server.address``,
``server.port``, ``rpc.grpc.status_code``, ``rpc.client.duration``,
``rpc.server.duration``); the rest live under ``shardroute.``.
"""

from __future__ import annotations

from typing import Final

INSTRUMENTATION_SCOPE: Final = "shardroute"
"""The tracer's and the meter's instrumentation scope name."""

DURATION_BUCKETS_S: Final = (
    0.00002,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Explicit bucket advice of every duration histogram (seconds): from 20 µs (a loopback
call) to 5 minutes (a long stream, a drain). The SDK's default boundaries (0, 5, 10, …
10,000) would put every call in the first bucket."""

SIZE_BUCKETS_BYTES: Final = (
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
)
"""Explicit bucket advice of the checkpoint size histogram (bytes)."""

# -- attributes: OpenTelemetry RPC semantic conventions ---------------------------------
RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
GRPC: Final = "grpc"

# -- attributes: shardroute ---------------------------------------------------------------
SHARD: Final = "shardroute.shard"
"""The shard that served (client) or serves (shard) the call."""
HOME: Final = "shardroute.home"
"""The shard the decision chose first, on a client span when it differs from the shard."""
REASON: Final = "shardroute.reason"
"""Why the call went where it went: affinity, memo, spill, zone_fallback, failover,
redirect (and override on the shard side: a moved session)."""
PRIORITY: Final = "shardroute.priority"
ATTEMPTS: Final = "shardroute.attempts"
SESSION_HASH: Final = "shardroute.session.hash"
"""A short stable hash of the session key (the default)."""
SESSION_KEY: Final = "shardroute.session.key"
"""The raw session key: only when the user opted in (``record_session_key=True``)."""
SERVICE: Final = "shardroute.service"
FAILURE: Final = "shardroute.failure"
"""The failure class of a failed attempt (not_sent, maybe_executed, ..., redirected)."""
CAUSE: Final = "shardroute.cause"
OUTCOME: Final = "shardroute.outcome"
STEP: Final = "shardroute.step"
STEP_IN_IMPORT: Final = "shardroute.step.in_import"
"""On a move's ``warm`` step: True when the target warmed the session within the import
call (the span then covers no call of its own)."""
STEP_PUSHED: Final = "shardroute.step.pushed"
"""On a move's ``export`` step: True when the source imported the state into the target
itself (``push_to``; the span covers that import); on its ``import`` step, then an empty
span, True as well."""
STEP_AWAITED: Final = "shardroute.step.awaited"
"""On a move's ``release`` step: False, the span covers sending it, not its answer."""
SOURCE_SHARD: Final = "shardroute.source"
TARGET_SHARD: Final = "shardroute.target"
SESSION_COUNT: Final = "shardroute.sessions"
"""How many sessions a drain moves."""
ETCD_REVISION: Final = "shardroute.revision"

# -- spans and events ---------------------------------------------------------------------
SPAN_MIGRATION: Final = "shardroute.migrate"
SPAN_MIGRATION_STEP: Final = "shardroute.migrate."
"""Prefix of a migration step's span: ``shardroute.migrate.fence``, ``.export``, ..."""
SPAN_DRAIN: Final = "shardroute.drain"
EVENT_ATTEMPT_FAILED: Final = "shardroute.attempt_failed"
EVENT_TOPOLOGY_RESYNC: Final = "shardroute.topology.resync"
EVENT_ETCD_UNAVAILABLE: Final = "shardroute.etcd.unavailable"
EVENT_ETCD_RESUMED: Final = "shardroute.etcd.resumed"
EVENT: Final = "shardroute.event"
"""Which topology event (attribute of ``shardroute.topology.events``)."""

# -- client instruments ------------------------------------------------------------------
CLIENT_DURATION: Final = "rpc.client.duration"
DECISIONS: Final = "shardroute.client.decisions"
SPILLS: Final = "shardroute.client.spills"
FAILOVERS: Final = "shardroute.client.failovers"
REDIRECTS: Final = "shardroute.client.redirects"
OVERLOADED: Final = "shardroute.client.overloaded"
AT_CEILING: Final = "shardroute.client.at_ceiling"
"""Calls routed past a home that was at the ceiling of the call's priority."""
EJECTIONS: Final = "shardroute.client.ejections"
EJECTED: Final = "shardroute.client.ejected_shards"
STALENESS: Final = "shardroute.topology.staleness"
REVISION: Final = "shardroute.topology.revision"
MALFORMED: Final = "shardroute.topology.malformed_records"
CHANNELS: Final = "shardroute.client.channels"
TOPOLOGY_EVENTS: Final = "shardroute.topology.events"

# -- shard instruments -------------------------------------------------------------------
SERVER_DURATION: Final = "rpc.server.duration"
INFLIGHT: Final = "shardroute.shard.inflight"
QUEUE: Final = "shardroute.shard.queue"
SESSIONS: Final = "shardroute.shard.sessions"
CHECKPOINT_DURATION: Final = "shardroute.shard.checkpoint.duration"
CHECKPOINT_SIZE: Final = "shardroute.shard.checkpoint.size"
MIGRATIONS: Final = "shardroute.shard.migrations"
MIGRATION_DURATION: Final = "shardroute.shard.migration.duration"
TAKEOVERS: Final = "shardroute.shard.takeovers"
REDIRECTS_SENT: Final = "shardroute.shard.redirects"

# -- loggers -----------------------------------------------------------------------------
LOG_CLIENT: Final = "shardroute.client"
"""Ejections, failovers and redirects (WARNING / INFO), with ``extra=`` fields."""
LOG_MIGRATION: Final = "shardroute.migration"
"""Each migration's outcome (INFO, WARNING when rolled back)."""
LOG_SERVER: Final = "shardroute.server"
"""Drains and the shard's lifecycle."""
LOG_DISCOVERY: Final = "shardroute.discovery"
"""A topology source's etcd watch lost, resumed, and full resyncs."""
