"""Fault injection for tests: a TCP proxy whose link can be cut and restored.

Put a :class:`TcpProxy` between a client and etcd (or a shard) to simulate a network
partition without killing the server: ``cut()`` drops every open connection and
refuses new ones until ``restore()``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` (``host:port``), with a kill switch.

    Lifecycle: ``start()`` once; ``close()`` is idempotent; usable with ``with``.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self.connections_total = 0

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
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def restore(self) -> None:
        """Accept and forward connections again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop the proxy and drop every connection. Idempotent."""
        self._closed = True
        self.cut()
        _close(self._listener)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            with self._lock:
                self._conns.update((client, upstream))
                self.connections_total += 1
            threading.Thread(
                target=self._pump, args=(client, upstream), name="tcp-proxy-pump", daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                sock.setblocking(True)
                selector.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select(timeout=1.0):
                        src = key.fileobj
                        assert isinstance(src, socket.socket)
                        data = src.recv(65536)
                        if not data:
                            return
                        peers[src].sendall(data)
                    if a.fileno() < 0 or b.fileno() < 0:
                        return
            except (OSError, ValueError):
                return
            finally:
                with self._lock:
                    self._conns.difference_update(peers)
                _close(a)
                _close(b)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
