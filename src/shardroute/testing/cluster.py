"""Real shard servers in subprocesses, registered in a real etcd, for tests.

:class:`ShardCluster` starts each shard with ``python -m shardroute.server.run`` in its
own process, so a test can SIGKILL one (lease expiry), SIGTERM one (graceful drain) or
add one, and watches the service's topology to wait for the effect instead of sleeping.
The ``shard_cluster`` pytest fixture (:mod:`shardroute.testing.plugin`) wraps it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import ConfigError, ShardStartError
from shardroute.etcd.credentials import PASSWORD_ENV, PASSWORD_FILE_ENV
from shardroute.model import ShardState, Topology
from shardroute.security import TLSConfig

__all__ = ["DEFAULT_SHARD_CLASS", "ShardCluster", "ShardProcess", "ShardStartError"]

DEFAULT_SHARD_CLASS = "shardroute.examples.chat:ChatShard"


@dataclass(slots=True)
class ShardProcess:
    """One shard subprocess of a :class:`ShardCluster`."""

    shard_id: str
    zone: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """True until the process exited."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the shard's log (its stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ShardCluster:
    """N shard servers of one class, each in its own process, registered in etcd.

    Args:
        etcd_endpoint: ``host:port`` of etcd.
        server_class: ``"package.module:Class"``, a ShardServer or AsyncShardServer
            subclass importable in a subprocess (this process's ``sys.path`` is passed
            on as ``PYTHONPATH``).
        service: the service name.
        zones: zones assigned round-robin to shards added without an explicit zone.
        lease_ttl_s: the shards' lease TTL (short, so a kill is noticed fast).
        drain_grace_s: the shards' default drain grace.
        log_dir: where each shard's stderr goes (``<shard_id>.log``); a temp dir if None.
        shard_kwargs: extra constructor arguments for every shard (JSON-serialisable).
        tls: serve TLS in every shard (``--tls-*`` options of the shard command; with
            ``ca``, mutual TLS).
        start_timeout: seconds a shard gets to print ``READY``.
        etcd_user: the etcd user of the cluster's own topology source, and of every shard
            that does not name its own (``etcd_user``/``etcd_password`` in
            ``shard_kwargs`` or :meth:`add`'s ``kwargs``).
        etcd_password: ``etcd_user``'s password. Passwords reach a shard process in its
            environment (``$SHARDROUTE_ETCD_PASSWORD``), never on its command line,
            which every user of the machine can read.

    Lifecycle: :meth:`start` launches shards in parallel and returns once every one is
    registered (seen through :attr:`source`, an :class:`EtcdTopologySource`);
    :meth:`close` kills every process still running (also on failures). Not
    thread-safe: drive it from the test's thread.
    """

    def __init__(
        self,
        etcd_endpoint: str,
        *,
        server_class: str = DEFAULT_SHARD_CLASS,
        service: str = "chat",
        zones: Sequence[str] = ("zone-a", "zone-b"),
        lease_ttl_s: int = 2,
        drain_grace_s: float = 5.0,
        log_dir: str | os.PathLike[str] | None = None,
        shard_kwargs: Mapping[str, Any] | None = None,
        start_timeout: float = 30.0,
        tls: TLSConfig | None = None,
        etcd_user: str | None = None,
        etcd_password: str | None = None,
    ) -> None:
        if not zones:
            raise ConfigError("zones must not be empty")
        if (etcd_user is None) != (etcd_password is None):
            raise ConfigError("etcd_user and etcd_password go together: give both or neither")
        self.etcd_user = etcd_user
        self._etcd_password = etcd_password
        self.etcd_endpoint = etcd_endpoint
        self.server_class = server_class
        self.service = service
        self.zones = tuple(zones)
        self.lease_ttl_s = lease_ttl_s
        self.drain_grace_s = drain_grace_s
        self.shard_kwargs = dict(shard_kwargs or {})
        self.start_timeout = start_timeout
        self.tls = tls
        self._log_dir_arg = log_dir
        self._log_dir: Path | None = None
        self._tmp: Any = None
        self._procs: dict[str, ShardProcess] = {}
        self._exited: dict[str, ShardProcess] = {}
        self._next_index = 0
        self._source: EtcdTopologySource | None = None

    # -- views ------------------------------------------------------------------------

    @property
    def source(self) -> EtcdTopologySource:
        """A started topology source on the cluster's service (created on first use)."""
        if self._source is None:
            self._source = EtcdTopologySource(
                self.etcd_endpoint,
                self.service,
                user=self.etcd_user,
                password=self._etcd_password,
            )
            self._source.start()
        return self._source

    @property
    def shards(self) -> Mapping[str, ShardProcess]:
        """Shards whose process is running, by id."""
        return {sid: p for sid, p in self._procs.items() if p.running}

    @property
    def addresses(self) -> dict[str, str]:
        """``shard_id → host:port`` of the running shards."""
        return {sid: p.address for sid, p in self.shards.items()}

    @property
    def shard_ids(self) -> list[str]:
        """Ids of the running shards, sorted."""
        return sorted(self.shards)

    def __getitem__(self, shard_id: str) -> ShardProcess:
        try:
            return self._procs[shard_id]
        except KeyError:
            return self._exited[shard_id]

    def wait_for(self, predicate: Callable[[Topology], bool], timeout: float = 10.0) -> Topology:
        """Block until the service's topology satisfies ``predicate`` (no sleeping)."""
        return self.source.wait_for(predicate, timeout)

    # -- lifecycle --------------------------------------------------------------------

    def start(self, count: int) -> ShardCluster:
        """Start ``count`` shards (``shard-0`` …) in parallel; return once all registered."""
        return self.start_each([{}] * count)

    def start_each(self, shard_kwargs: Sequence[Mapping[str, Any]]) -> ShardCluster:
        """Start one shard per mapping of extra constructor arguments (as for
        :meth:`add`), in parallel; return once all registered."""
        specs = [self._spec(None, None, kwargs) for kwargs in shard_kwargs]
        launched = [self._launch(*spec) for spec in specs]
        for proc in launched:
            self._await_ready(proc)
        ids = {p.shard_id for p in launched}
        self.wait_for(lambda t: ids <= set(t.shards), timeout=self.start_timeout)
        return self

    def add(self, shard_id: str | None = None, *, zone: str | None = None, **kwargs: Any) -> str:
        """Start one more shard and wait until it is registered; returns its id.

        ``kwargs`` are extra constructor arguments (``capacity=8``, ``weight=2.0``,
        ``labels={...}``, or the class's own).
        """
        proc = self._launch(*self._spec(shard_id, zone, kwargs))
        self._await_ready(proc)
        self.wait_for(lambda t: proc.shard_id in t.shards, timeout=self.start_timeout)
        return proc.shard_id

    def kill(self, shard_id: str) -> None:
        """SIGKILL a shard and reap it. Its record stays in etcd until its lease expires:
        wait for that with ``wait_for(lambda t: shard_id not in t.shards)``."""
        proc = self._procs[shard_id]
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait()
        self._retire(shard_id)

    def stop(self, shard_id: str) -> None:
        """SIGSTOP a shard: it stays connected and registered but answers nothing (a
        wedged process) until :meth:`resume`; its lease expires meanwhile."""
        self._procs[shard_id].process.send_signal(signal.SIGSTOP)

    def resume(self, shard_id: str) -> None:
        """SIGCONT a shard stopped by :meth:`stop`."""
        self._procs[shard_id].process.send_signal(signal.SIGCONT)

    def drain(
        self, shard_id: str, timeout: float | None = None, *, wait: bool = True
    ) -> int | None:
        """SIGTERM a shard (graceful drain). With ``wait`` (default), return its exit code
        once it exited; otherwise return None at once (then call :meth:`wait_exit`)."""
        proc = self._procs[shard_id]
        proc.process.send_signal(signal.SIGTERM)
        return self.wait_exit(shard_id, timeout) if wait else None

    def wait_exit(self, shard_id: str, timeout: float | None = None) -> int:
        """Wait until a shard's process exited; its exit code."""
        proc = self[shard_id]
        try:
            code = proc.process.wait(timeout or self.drain_grace_s + 30.0)
        finally:
            self._retire(shard_id)
        return code

    def close(self) -> None:
        """Kill every shard still running, close the topology source. Idempotent."""
        for shard_id in list(self._procs):
            proc = self._procs[shard_id]
            if proc.running:
                proc.process.kill()
            proc.process.wait()
            if proc.process.stdout is not None:
                proc.process.stdout.close()
            self._retire(shard_id)
        if self._source is not None:
            self._source.close()
            self._source = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ShardCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _retire(self, shard_id: str) -> None:
        proc = self._procs.pop(shard_id, None)
        if proc is not None:
            self._exited[shard_id] = proc

    def _spec(
        self, shard_id: str | None, zone: str | None, kwargs: Mapping[str, Any]
    ) -> tuple[str, str, dict[str, Any]]:
        index = self._next_index
        self._next_index += 1
        if shard_id is None:
            shard_id = f"shard-{index}"
            while shard_id in self._procs or shard_id in self._exited:
                index += 1
                shard_id = f"shard-{index}"
        if shard_id in self._procs:
            raise ConfigError(f"shard {shard_id!r} is already running")
        zone = self.zones[index % len(self.zones)] if zone is None else zone
        return shard_id, zone, {**self.shard_kwargs, **kwargs}

    def _logs(self) -> Path:
        if self._log_dir is None:
            if self._log_dir_arg is not None:
                self._log_dir = Path(self._log_dir_arg)
                self._log_dir.mkdir(parents=True, exist_ok=True)
            else:
                import tempfile

                self._tmp = tempfile.TemporaryDirectory(prefix="shardroute-cluster-")
                self._log_dir = Path(self._tmp.name)
        return self._log_dir

    def _launch(self, shard_id: str, zone: str, kwargs: dict[str, Any]) -> ShardProcess:
        kwargs = dict(kwargs)
        user = kwargs.pop("etcd_user", self.etcd_user)
        password = kwargs.pop(
            "etcd_password", self._etcd_password if user == self.etcd_user else None
        )
        if (user is None) != (password is None):
            raise ConfigError(
                f"shard {shard_id}: etcd_user and etcd_password go together: give both or neither"
            )
        command = [
            sys.executable,
            "-m",
            "shardroute.server.run",
            "--class",
            self.server_class,
            "--etcd",
            self.etcd_endpoint,
            "--service",
            self.service,
            "--shard-id",
            shard_id,
            "--zone",
            zone,
            "--lease-ttl",
            str(self.lease_ttl_s),
            "--drain-grace",
            str(self.drain_grace_s),
            "--kwargs",
            json.dumps(kwargs),
        ]
        if self.tls is not None:  # paths only: the files are read by the shard
            for flag, path in (
                ("--tls-ca", self.tls.ca),
                ("--tls-cert", self.tls.cert),
                ("--tls-key", self.tls.key),
            ):
                if path is not None:
                    command += [flag, path]
        env = dict(os.environ)
        env.pop(PASSWORD_ENV, None)
        env.pop(PASSWORD_FILE_ENV, None)
        if user is not None and password is not None:  # the environment, not the command line
            command += ["--etcd-user", user]
            env[PASSWORD_ENV] = password
        paths = [p for p in sys.path if p]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        log_path = self._logs() / f"{shard_id}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env
            )
        proc = ShardProcess(shard_id, zone, "", process, log_path)
        self._procs[shard_id] = proc
        return proc

    def _await_ready(self, proc: ShardProcess) -> None:
        stdout = proc.process.stdout
        assert stdout is not None
        line = _readline(stdout, self.start_timeout)
        if line is None or not line.startswith("READY "):
            if proc.running:
                proc.process.kill()
            proc.process.wait()
            self._retire(proc.shard_id)
            what = "timed out" if line is None else f"printed {line!r}"
            raise ShardStartError(
                f"shard {proc.shard_id} ({self.server_class}) {what} before READY "
                f"(exit code {proc.process.returncode}); log {proc.log_path}:\n"
                f"{proc.log_tail()}"
            )
        proc.address = line.split(" ", 1)[1].strip()


def _readline(stream: IO[bytes], timeout: float) -> str | None:
    """One line from ``stream`` within ``timeout`` seconds ("" at EOF), else None."""
    result: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    reader = threading.Thread(target=lambda: result.put(stream.readline()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        return result.get(timeout=max(0.0, deadline - time.monotonic())).decode(errors="replace")
    except queue.Empty:
        return None


def shard_state(topology: Topology, shard_id: str) -> ShardState | None:
    """The state of a shard in a topology, or None when it is not registered."""
    shard = topology.shards.get(shard_id)
    return None if shard is None else shard.state
