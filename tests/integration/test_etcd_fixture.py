"""The etcd_server fixture and EtcdServer.launch(): each test's etcd is launched while
the previous test runs, and is still a new, empty server of its own."""

from __future__ import annotations

from shardroute.testing.etcd import EtcdServer


def test_the_fixture_gives_a_new_empty_etcd(etcd_server: EtcdServer) -> None:
    client = etcd_server.client()
    try:
        assert client.revision() == 1  # nothing was ever written to it
        assert client.range("\0", "\0")[1] == []  # every key: none
        assert client.put("k", b"v") == 2
    finally:
        client.close()


def test_a_launched_server_serves_once_started() -> None:
    server = EtcdServer().launch()
    try:
        assert server.running
        assert server.start() is server  # waits until it is healthy
        client = server.client()
        try:
            client.put("k", b"v")
            assert client.get("k") == b"v"
        finally:
            client.close()
    finally:
        server.close()
    assert not server.running
