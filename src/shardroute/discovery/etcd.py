"""Live topology from etcd: an initial read, then a watch that resumes where it stopped.

The loop (one daemon thread per source):

1. Full read of the service's shard, load and config keys at one revision R, publish.
2. Watch the service prefix from R+1. Each response becomes a new snapshot (pure
   :func:`~shardroute.discovery.changes.apply_changes`) and one reference swap.
3. On a broken stream: mark the view stale (the last snapshot stays in use), back off
   with jitter, and watch again from the last applied revision + 1, so no event is
   missed and none applied twice (older events are dropped by revision).
4. When that revision was compacted, or etcd came back with a lower revision (a new
   cluster), do a full resync instead.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence

from shardroute._validate import seconds
from shardroute.discovery.changes import apply_changes, build_topology
from shardroute.discovery.keys import KeySchema
from shardroute.discovery.source import HolderSource, SnapshotHolder
from shardroute.errors import Compacted, ConfigError, EtcdUnavailable, ShardRouteError
from shardroute.etcd import EtcdClient, EtcdOptions, WatchStream, etcd_options
from shardroute.model import Topology
from shardroute.telemetry import Telemetry
from shardroute.telemetry.names import EVENT_ETCD_RESUMED, EVENT_ETCD_UNAVAILABLE
from shardroute.telemetry.names import EVENT_TOPOLOGY_RESYNC as RESYNC
from shardroute.telemetry.topology import topology_event

__all__ = ["EtcdTopologySource"]

log = logging.getLogger("shardroute.discovery")


class EtcdTopologySource(HolderSource):
    """A :class:`~shardroute.discovery.source.TopologySource` fed by etcd watches.

    Args:
        endpoints: how to reach etcd: an :class:`~shardroute.etcd.EtcdOptions`, or
            endpoints ``host:port`` (one string or several; failover between them),
            then completed by the keyword arguments below.
        service: the service name (keys under ``/shardroute/<service>/``).
        timeout: per-call etcd timeout in seconds (default 5).
        ca_cert: PEM file path of the CA that signs etcd's certificate (TLS).
        cert_key: PEM file path of the client certificate's key (optional).
        cert_cert: PEM file path of the client certificate (optional).
        user: etcd authentication: the user name.
        password: etcd authentication: the password.
        backoff_initial_s: first reconnect backoff (exponential, full jitter).
        backoff_max_s: longest reconnect backoff.
        include_sessions: also follow session overrides into ``Topology.overrides``
            (shard servers need them; clients do not, their hot path never reads them).
        telemetry: where topology events go (resync, etcd lost and back;
            docs/observability.md); default: the global OpenTelemetry providers.

    Lifecycle: ``start()`` reads the first snapshot in the calling thread (retrying for
    up to ``timeout`` seconds, then raising :class:`~shardroute.errors.EtcdUnavailable`
    when etcd cannot be reached; with ``keep_trying=True`` it returns instead and the
    thread keeps reading until it succeeds, :attr:`loaded` telling when) and then
    follows changes in a daemon thread; ``close()`` is idempotent. Subscribers are
    called in that thread, one at a time; keep them short.
    """

    def __init__(
        self,
        endpoints: EtcdOptions | str | Sequence[str],
        service: str,
        *,
        timeout: float | None = None,
        ca_cert: str | None = None,
        cert_key: str | None = None,
        cert_cert: str | None = None,
        user: str | None = None,
        password: str | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        include_sessions: bool = False,
        telemetry: Telemetry | None = None,
    ) -> None:
        seconds("backoff_initial_s", backoff_initial_s)
        if seconds("backoff_max_s", backoff_max_s) < backoff_initial_s:
            raise ConfigError("backoff must satisfy 0 < backoff_initial_s <= backoff_max_s")
        self._schema = KeySchema(service)
        self._options = etcd_options(
            endpoints,
            timeout=timeout,
            ca_cert=ca_cert,
            cert_key=cert_key,
            cert_cert=cert_cert,
            user=user,
            password=password,
        )
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._include_sessions = include_sessions
        self._holder = SnapshotHolder(Topology(service=service))
        self._etcd = EtcdClient(self._options)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        """Where topology events (resync, etcd lost and back) go."""
        self.resyncs = 0
        """Full re-reads done after compaction or an etcd reset."""
        self.reconnects = 0
        """Watches re-opened after a broken stream."""
        self._loaded = False

    @property
    def etcd_endpoint(self) -> str | None:
        """The etcd member this source reads and watches now (``host:port``; None before
        the first read): with several endpoints, it moves when that member fails."""
        return self._etcd.current_endpoint

    @property
    def options(self) -> EtcdOptions:
        """How this source reaches etcd (endpoints, timeout, TLS, auth)."""
        return self._options

    @property
    def loaded(self) -> bool:
        """Whether the first full read succeeded (before it, :meth:`current` is an empty
        topology that says nothing about which shards live)."""
        return self._loaded

    # -- lifecycle ------------------------------------------------------------------

    def start(self, *, keep_trying: bool = False) -> None:
        """Load the first snapshot, then follow changes in a background thread.

        ``keep_trying``: when etcd cannot be reached within ``timeout``, do not raise;
        the thread keeps trying (the view is stale and :attr:`loaded` False until then).
        """
        if self._thread is not None:
            raise RuntimeError("EtcdTopologySource.start() called twice")
        if self._closed.is_set():
            raise RuntimeError("EtcdTopologySource is closed")
        # Retry for up to one etcd timeout (at least once per endpoint): a failed
        # endpoint is skipped on the next attempt, and an etcd that is just starting
        # or electing a leader gets a moment.
        deadline = time.monotonic() + self._options.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                self._resync()
                break
            except EtcdUnavailable as exc:
                if attempt >= len(self._options.endpoints) and time.monotonic() >= deadline:
                    if keep_trying:
                        self._holder.mark_stale(exc)
                        break
                    endpoints = ", ".join(self._options.endpoints)
                    raise EtcdUnavailable(
                        f"cannot reach etcd at {endpoints} ({exc}); check that etcd runs "
                        "there (for development: `shardroute etcd`)"
                    ) from exc
                self._closed.wait(min(0.2, 0.02 * attempt))
        self._thread = threading.Thread(
            target=self._run, name=f"shardroute-topology-{self.service}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the watch thread and close the etcd connection. Idempotent."""
        self._closed.set()
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._options.timeout + 1)
        self._etcd.close()

    # -- the loop -------------------------------------------------------------------

    def _resync(self) -> None:
        """Full read of the topology keys at one revision, then publish."""
        prefix = self._schema.prefix
        if self._include_sessions:
            revision, items = self._etcd.range(*self._schema.topology_range)
        else:
            # config and load/* sort before sessions/ and shards/: one range covers
            # both and skips the session overrides (many, not needed by clients), then
            # shards/* at the same revision.
            revision, head = self._etcd.range(prefix + "config", prefix + "load0")
            _, shards = self._etcd.range_prefix(prefix + "shards/", revision)
            items = head + shards
        previous = self._holder.current()
        topology, errors = build_topology(
            self._schema, items, revision, previous, include_sessions=self._include_sessions
        )
        self._holder.count_malformed(errors, previous.malformed)
        self._holder.publish(topology, resync=True)
        self._loaded = True
        self._holder.mark_live()

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                if not self._loaded:  # started with keep_trying while etcd was down
                    self._resync()
                self._follow()
                failures = 0
            except Compacted as exc:
                log.info(
                    "%s: etcd compacted the history the topology watch needed (%s): reading "
                    "the whole topology again; nothing to do",
                    self.service,
                    exc,
                )
                topology_event(
                    RESYNC,
                    self.service,
                    self._holder.current().revision,
                    str(exc),
                    telemetry=self.telemetry,
                )
                try:
                    self.resyncs += 1
                    self._resync()
                    failures = 0
                except ShardRouteError as err:
                    failures = self._on_failure(err, failures)
            except ShardRouteError as exc:
                failures = self._on_failure(exc, failures)
            except Exception as exc:  # never let the thread die silently
                log.exception(
                    "%s: unexpected error in the topology watch (retrying; routing goes on "
                    "with the last view); please report it with this traceback",
                    self.service,
                )
                failures = self._on_failure(EtcdUnavailable(str(exc)), failures)

    def _on_failure(self, error: ShardRouteError, failures: int) -> int:
        if self._closed.is_set():
            return failures
        self._holder.mark_stale(error)
        if failures == 0:
            revision = self._holder.current().revision
            topology_event(
                EVENT_ETCD_UNAVAILABLE, self.service, revision, str(error), telemetry=self.telemetry
            )
            log.warning(
                "%s: lost the topology watch on etcd (%s): routing goes on with the last view "
                "(revision %d) until etcd is back, then catches up; no data is at risk; "
                "check that etcd is reachable",
                self.service,
                error,
                self._holder.current().revision,
            )
        initial, ceiling = self._backoff
        delay = random.uniform(0, min(ceiling, initial * 2**failures))
        self._closed.wait(delay)
        return failures + 1

    def _follow(self) -> None:
        """Watch from the last applied revision + 1 until the stream breaks."""
        start = self._holder.current().revision + 1
        stream = self._etcd.watch_range(*self._schema.topology_range, start)
        with self._stream_lock:
            if self._closed.is_set():
                stream.cancel()
                return
            self._stream = stream
        try:
            if stream.created_revision < start - 1:
                # etcd answers with a revision below what we already saw: it is a new
                # cluster (data lost or replaced). Our revision means nothing there.
                log.warning(
                    "%s: etcd's revision went back (%d < %d): etcd was replaced or restored, "
                    "and the whole topology is read again; if it was restored from a backup, "
                    "what was written to it since (session state in an etcd store too) is "
                    "gone: check how etcd was restored",
                    self.service,
                    stream.created_revision,
                    start - 1,
                )
                topology_event(
                    RESYNC,
                    self.service,
                    start - 1,
                    "etcd revision went back",
                    telemetry=self.telemetry,
                )
                self.resyncs += 1
                self._resync()
                return
            if self._holder.last_error is not None:
                self.reconnects += 1
                log.info("%s: etcd watch resumed from revision %d", self.service, start)
                topology_event(
                    EVENT_ETCD_RESUMED, self.service, start - 1, telemetry=self.telemetry
                )
            self._holder.mark_live()
            for batch in stream:
                current = self._holder.current()
                topology, errors = apply_changes(
                    current, self._schema, batch.changes, include_sessions=self._include_sessions
                )
                self._holder.count_malformed(errors, current.malformed)
                self._holder.publish(topology)
        finally:
            with self._stream_lock:
                self._stream = None
            stream.cancel()
