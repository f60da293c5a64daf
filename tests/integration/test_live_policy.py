"""Routing policy from the service's config key in a real etcd, changed live."""

from __future__ import annotations

import json
import logging

import pytest

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.discovery.keys import KeySchema
from shardroute.etcd import EtcdClient
from shardroute.routing import Router


def test_policy_follows_etcd_and_bad_config_keeps_previous(
    etcd_endpoint: str, etcd: EtcdClient, schema: KeySchema, caplog: pytest.LogCaptureFixture
) -> None:
    etcd.put(schema.shard("s1"), b'{"address": "127.0.0.1:7001"}')
    source = EtcdTopologySource(etcd_endpoint, "chat")
    source.start()
    router = Router()
    source.subscribe(router.prepare)
    try:
        assert router.policy.balance_factor == 1.25
        etcd.put(schema.config, json.dumps({"routing": {"balance_factor": 1.5}}).encode())
        source.wait_for(lambda t: t.config is not None, 5)
        router.route("k", source.current())
        assert router.policy.balance_factor == 1.5 and router.config_error is None
        with caplog.at_level(logging.ERROR, logger="shardroute.routing"):
            etcd.put(schema.config, b'{"routing": {"balance_factor": 0.5}}')
            topology = source.wait_for(
                lambda t: t.config != {"routing": {"balance_factor": 1.5}}, 5
            )
            router.route("k", topology)
        assert router.policy.balance_factor == 1.5  # the previous policy stays
        assert router.config_error is not None and "balance_factor" in str(router.config_error)
        assert any("balance_factor" in r.getMessage() for r in caplog.records)
        etcd.delete(schema.config)
        router.route("k", source.wait_for(lambda t: t.config is None, 5))
        assert router.policy.balance_factor == 1.25
    finally:
        source.close()
