"""Start an embedded etcd and three chat shards (subprocesses); print where they are.

    python examples/chat/run_cluster.py [--shards 3]

Stops everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from shardroute.testing.cluster import ShardCluster
from shardroute.testing.etcd import EtcdServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    with EtcdServer() as etcd:
        etcd.start()
        with ShardCluster(etcd.endpoint, lease_ttl_s=5) as cluster:
            cluster.start(args.shards)
            print(f"etcd: {etcd.endpoint}   service: chat")
            for shard_id, proc in sorted(cluster.shards.items()):
                print(f"  {shard_id}  {proc.address}  zone={proc.zone}  pid={proc.pid}")
            print(f"topology: shardroute topology --etcd {etcd.endpoint} --service chat --watch")
            print("Ctrl-C to stop")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()


if __name__ == "__main__":
    main()
