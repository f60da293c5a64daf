"""``shardroute demo``: chat traffic over real shards, with a shard killed and one drained.

Everything runs on this machine and is cleaned up at the end (Ctrl-C included): an
embedded etcd in a temp dir, 4 chat shards in 2 zones (one process each), and a
``ShardClient`` in zone-a, in this process, sending chat turns for many sessions from
worker threads. Midway a zone-a shard is SIGKILLed, a shard added in zone-a and a zone-b
shard drained (SIGTERM); the live view shows the shards, their load, what the client did
and etcd's database size, and a summary ends the run, also when a scripted step (kill,
add, drain) failed.
"""

from shardroute.demo._config import DemoConfig
from shardroute.demo._run import main, run_demo

__all__ = ["DemoConfig", "main", "run_demo"]
