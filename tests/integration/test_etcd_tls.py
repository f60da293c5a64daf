"""TLS (with client certificates) is passed through to etcd: reads, watches, writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from shardroute.discovery.etcd import EtcdTopologySource
from shardroute.errors import EtcdUnavailable
from shardroute.etcd import EtcdClient, EtcdOptions
from shardroute.testing.etcd import EtcdServer, EtcdTls


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("shardroute-client")
    files = {
        "ca": ca.cert_pem,
        "cert": server.cert_chain_pems[0],
        "key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        path = tmp_path / f"{name}.pem"
        blob.write_to_path(str(path))
        paths[name] = str(path)
    return paths


@pytest.fixture
def tls_etcd(pems: dict[str, str]) -> Iterator[EtcdServer]:
    tls = EtcdTls(pems["cert"], pems["key"], pems["ca"], client_ca=pems["ca"])
    with EtcdServer(tls=tls) as server:
        yield server


def test_tls_with_client_certificates(tls_etcd: EtcdServer, pems: dict[str, str]) -> None:
    creds = {
        "ca_cert": pems["ca"],
        "cert_key": pems["client_key"],
        "cert_cert": pems["client_cert"],
    }
    writer = EtcdClient(EtcdOptions((tls_etcd.endpoint,), **creds))
    source = EtcdTopologySource(tls_etcd.endpoint, "chat", **creds)
    try:
        writer.put("/shardroute/chat/shards/a", b'{"address": "h:1"}')
        source.start()
        assert list(source.current().shards) == ["a"]
        writer.put("/shardroute/chat/shards/b", b'{"address": "h:2"}')  # through the watch
        source.wait_for(lambda t: "b" in t.shards, 10)
    finally:
        source.close()
        writer.close()
    with pytest.raises(EtcdUnavailable):  # plaintext against a TLS port
        EtcdTopologySource(tls_etcd.endpoint, "chat", timeout=1).start()
