"""The demo's view of etcd's space: database size and the NOSPACE alarm, sampled."""

from __future__ import annotations

import threading

from shardroute.demo._config import MiB
from shardroute.errors import EtcdUnavailable
from shardroute.etcd import EtcdClient
from shardroute.testing.etcd import EtcdServer

__all__ = ["EtcdSpace"]


class EtcdSpace:
    """Samples the embedded etcd's database size and alarms about every second, from a
    thread, for the live view and the summary."""

    def __init__(self, etcd: EtcdServer, interval_s: float = 1.0) -> None:
        self.quota = etcd.quota_backend_bytes
        self._client: EtcdClient = etcd.client(timeout=2.0)
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.db_size = 0
        self.peak = 0
        self.nospace_now = False
        self.nospace_seen = False
        self._thread = threading.Thread(target=self._run, name="demo-etcd-space", daemon=True)

    def start(self) -> EtcdSpace:
        self.sample()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        """Read etcd's db size and alarms once; keeps the last values when etcd is away."""
        try:
            size = self._client.status().db_size
            nospace = any(alarm.alarm == "NOSPACE" for alarm in self._client.alarms())
        except EtcdUnavailable:
            return
        with self._lock:
            self.db_size = size
            self.peak = max(self.peak, size)
            self.nospace_now = nospace
            self.nospace_seen = self.nospace_seen or nospace

    def lines(self) -> list[str]:
        """The live view's etcd lines: the db size and, under NOSPACE, what it means."""
        quota = f"{self.quota / MiB:.0f} MiB" if self.quota else "etcd's default"
        with self._lock:
            size, peak, nospace = self.db_size, self.peak, self.nospace_now
        lines = [f"etcd db {size / MiB:.1f} MiB (peak {peak / MiB:.1f} MiB, quota {quota})"]
        if nospace:
            lines.append(
                f"etcd NOSPACE: etcd's database hit its {quota} quota, so it refuses every "
                "write (turn checkpoints, load reports, new shards); data already saved is "
                "safe. Fix: compact, defrag, then 'etcdctl alarm disarm' (docs/operations.md)"
            )
        return lines

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()  # the last word for the summary
        self._client.close()
