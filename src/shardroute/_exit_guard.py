"""A command that finished its work ends its process, even when a library's teardown
hangs.

The ``shardroute`` command talks to etcd and shards over gRPC. Once a command has done
its work and printed its result, closing those channels and the interpreter's own exit
should take milliseconds; gRPC has known, rare deadlocks in exactly that teardown
(grpc/grpc#20026), and a CLI that prints "has left" and then never returns stalls the
script or operator waiting on it. :func:`exit_within` arms a watchdog when the command
returns: if the process is still alive after the grace period, it prints one line saying
so, the stack of every thread (so the hang can be reported), and ends the process with
the command's own exit code.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

__all__ = ["DEFAULT_EXIT_GRACE_S", "exit_within"]

DEFAULT_EXIT_GRACE_S = 10.0
"""How long a finished command's process may take to exit before it is ended."""


def exit_within(code: int, grace_s: float = DEFAULT_EXIT_GRACE_S) -> None:
    """Arm the watchdog: if this process still runs ``grace_s`` from now, report and end
    it with ``code``.

    Two layers: a daemon thread, which can run through everything before the interpreter
    starts finalizing (closing channels, joining threads, exit hooks), and
    :func:`faulthandler.dump_traceback_later` a few seconds later, which runs even when
    no Python thread can (its exit code is 1).
    """

    def fire() -> None:
        time.sleep(grace_s)
        try:
            print(
                f"shardroute: the command finished (exit code {code}) but its process did "
                f"not exit within {grace_s:g} s (a hang while closing connections; nothing "
                "is lost: the command's work was done); ending it now. Thread stacks, for "
                "a bug report:",
                file=sys.stderr,
                flush=True,
            )
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
        finally:
            os._exit(code)

    threading.Thread(target=fire, name="shardroute-exit-guard", daemon=True).start()
    faulthandler.dump_traceback_later(grace_s + 5.0, exit=True)
