"""The one etcd boundary: every component that talks to etcd goes through here.

:class:`EtcdOptions` says how to reach etcd (endpoints, timeout, TLS files, user and
password); :class:`EtcdClient` does the calls and translates every failure once
(docs/architecture.md, "The etcd boundary").
"""

from shardroute.etcd.client import EtcdClient
from shardroute.etcd.maintenance import EtcdAlarm, EtcdStatus
from shardroute.etcd.options import EtcdOptions, etcd_options, parse_endpoint
from shardroute.etcd.watch import WatchBatch, WatchStream

__all__ = [
    "EtcdAlarm",
    "EtcdClient",
    "EtcdOptions",
    "EtcdStatus",
    "WatchBatch",
    "WatchStream",
    "etcd_options",
    "parse_endpoint",
]
