"""Fault injection for tests: a TCP proxy whose link can be cut, black-holed, slowed and
restored.

Put a :class:`TcpProxy` between a client and etcd (or a shard) to fake network trouble
without touching the server: ``cut()`` drops every open connection and refuses new ones
(a peer that is gone: the client sees errors at once); ``blackhole()`` keeps connections
open but lets nothing through (a partition: the client sees silence until its deadline
or keepalive); ``set_latency(s)`` delays every chunk of bytes by ``s`` seconds in each
direction (a slow link or a slow peer); ``restore()`` ends cut and black hole.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` (``host:port``), with a kill switch,
    a black hole and a delay line.

    Lifecycle: ``start()`` once; ``close()`` is idempotent; usable with ``with``. Each
    connection has a reader and a writer thread per direction; a delay is taken from
    when bytes arrive, so it does not add up under streaming.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._cut = False
        self._holed = False
        self._closed = False
        self.latency_s = 0.0
        """Seconds each chunk of bytes waits in each direction (0: none)."""
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self.connections_total = 0
        self.dropped_bytes = 0
        """Bytes swallowed by :meth:`blackhole`."""

    @property
    def endpoint(self) -> str:
        """Where clients connect: ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Begin accepting connections."""
        self._thread.start()
        return self

    def cut(self) -> None:
        """Drop every open connection and refuse new ones (until :meth:`restore`)."""
        with self._lock:
            self._cut = True
        self._drop_all()

    def blackhole(self) -> None:
        """Let nothing through, silently (until :meth:`restore`): connections stay open,
        new ones are accepted, every byte either way is dropped."""
        with self._lock:
            self._holed = True

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk of bytes by ``seconds`` in each direction (0: no delay)."""
        if not seconds >= 0:
            raise ValueError(f"latency must be >= 0 seconds, got {seconds!r}")
        self.latency_s = float(seconds)

    def restore(self) -> None:
        """Accept and forward connections again. After a black hole, the connections
        that lost bytes are dropped (as a peer's TCP gives up on them), so clients
        reconnect."""
        with self._lock:
            self._cut = False
            was_holed, self._holed = self._holed, False
        if was_holed:
            self._drop_all()

    def close(self) -> None:
        """Stop the proxy and drop every connection. Idempotent."""
        self._closed = True
        self.cut()
        _close(self._listener)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
                self.connections_total += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._forward, args=(src, dst), name="tcp-proxy-pump", daemon=True
                ).start()

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        """Read from ``src`` and hand each chunk, stamped with when it may go, to a
        writer thread for ``dst``."""
        line: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
        writer = threading.Thread(
            target=self._write, args=(line, src, dst), name="tcp-proxy-write", daemon=True
        )
        writer.start()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                with self._lock:
                    holed = self._holed
                    if holed:
                        self.dropped_bytes += len(data)
                if not holed:
                    line.put((time.monotonic() + self.latency_s, data))
        except (OSError, ValueError):
            return
        finally:
            line.put(None)

    def _write(
        self,
        line: queue.SimpleQueue[tuple[float, bytes] | None],
        src: socket.socket,
        dst: socket.socket,
    ) -> None:
        try:
            while (item := line.get()) is not None:
                release, data = item
                wait = release - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the delay line itself, not a synchronisation
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        with self._lock:
            self._conns.difference_update((src, dst))
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
