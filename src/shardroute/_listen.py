"""Whether a server can listen on an address: a trial bind before starting one, so the
commands (``shardroute serve``, ``shardroute etcd``) can refuse with one line naming
the cause instead of the server's own error."""

from __future__ import annotations

import errno
import socket

__all__ = ["cannot_listen", "host_port"]


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:7001``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def cannot_listen(host: str, port: int) -> str | None:
    """Why a server cannot listen on ``host:port``, in words with the likely cause, or
    None when it can.

    Trial-binds every address ``host`` resolves to (with ``SO_REUSEADDR``, as gRPC binds,
    closed at once). Like gRPC, one address that binds is enough, except that an address
    another process listens on is always reported (gRPC would serve on the others with a
    warning). A host in brackets (``[::1]``) is read without them.
    """
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"{host!r} does not resolve to an address ({exc.strerror})"
    first: OSError | None = None
    bound = False
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return _cause(exc, host)
            first = first or exc
        else:
            bound = True
    return None if bound or first is None else _cause(first, host)


def _cause(exc: OSError, host: str) -> str:
    said = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{said}: another process listens there"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{said}: {host} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"{said}: a port below 1024 needs privileges"
    return said
