"""etcd watches: our own bidirectional stream on the etcd3 package's generated stubs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from shardroute.discovery.changes import KeyChange
from shardroute.discovery.keys import decode_key
from shardroute.errors import Compacted, EtcdUnavailable
from shardroute.etcd._failover import endpoint_failed
from shardroute.etcd._translate import _from_rpc_error

__all__ = ["WatchBatch", "WatchStream"]


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: its changes, in order, and the header revision."""

    header_revision: int
    changes: tuple[KeyChange, ...]


class WatchStream:
    """One etcd watch stream. Iterate to get :class:`WatchBatch` objects.

    Iteration raises :class:`Compacted` or :class:`EtcdUnavailable` when the stream
    breaks, and stops quietly after :meth:`cancel`.
    """

    def __init__(
        self,
        stub: Any,
        request: Any,
        credentials: Any,
        metadata: Any,
        on_endpoint_failure: Callable[[], object] | None = None,
    ) -> None:
        self._on_endpoint_failure = on_endpoint_failure
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requests.put(request)
        self._cancelled = threading.Event()
        self._call = stub.Watch(
            iter(self._requests.get, None), credentials=credentials, metadata=metadata
        )
        self._responses: Iterator[Any] = iter(self._call)
        self.created_revision = 0

    def wait_created(self, timeout: float) -> None:
        """Block until etcd confirms the watch (or raise)."""
        timer = threading.Timer(timeout, self._call.cancel)
        timer.daemon = True
        timer.start()
        try:
            first = next(self._responses)
        except StopIteration:
            raise EtcdUnavailable("etcd closed the watch stream before creating it") from None
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.CANCELLED:
                raise EtcdUnavailable(f"etcd did not confirm the watch in {timeout}s") from exc
            raise _from_rpc_error(exc) from exc
        finally:
            timer.cancel()
        if first.compact_revision:
            raise Compacted(first.compact_revision)
        if first.canceled:
            raise EtcdUnavailable(f"etcd refused the watch: {first.cancel_reason}")
        self.created_revision = int(first.header.revision)

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for response in self._responses:
                if response.compact_revision:
                    raise Compacted(response.compact_revision)
                if response.canceled:
                    raise EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if not response.events:
                    continue
                changes = tuple(
                    KeyChange(
                        decode_key(event.kv.key),
                        None if event.type == 1 else bytes(event.kv.value),
                        int(event.kv.mod_revision),
                    )
                    for event in response.events
                )
                yield WatchBatch(int(response.header.revision), changes)
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                return
            if self._on_endpoint_failure is not None and endpoint_failed(exc):
                self._on_endpoint_failure()  # the next watch goes to another member
            raise _from_rpc_error(exc) from exc
        if not self._cancelled.is_set():
            raise EtcdUnavailable("etcd ended the watch stream")

    def cancel(self) -> None:
        """Stop the stream; a thread blocked in iteration returns. Idempotent."""
        self._cancelled.set()
        self._requests.put(None)
        self._call.cancel()
