"""Test support that ships with shardroute: a real embedded etcd and pytest fixtures."""

from shardroute.testing.etcd import EtcdServer, find_etcd_binary, free_port

__all__ = ["EtcdServer", "find_etcd_binary", "free_port"]
