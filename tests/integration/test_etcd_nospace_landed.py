"""etcd applies the write that fills its quota and *then* answers NOSPACE (its quota
applier), so a NOSPACE answer does not prove that nothing was written: the client reads
the keys back. A real etcd; the NOSPACE answer is injected after the real write (or
instead of it), since which write crosses the quota under load is a race."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from shardroute.errors import EtcdNoSpace
from shardroute.etcd.client import EtcdClient
from shardroute.testing.etcd import EtcdServer

NOSPACE = "etcdserver: mvcc: database space exceeded"


class NoSpaceAnswer(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return NOSPACE


def answer_nospace(real: Callable[..., Any], *, apply: bool) -> Callable[..., Any]:
    """``real`` (a raw etcd call), answering NOSPACE once: after applying the write
    (``apply``: the write that filled the quota) or instead of it."""
    answered: list[bool] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if answered:
            return real(*args, **kwargs)
        answered.append(True)
        if apply:
            real(*args, **kwargs)
        raise NoSpaceAnswer()

    return call


@pytest.fixture
def client(etcd_server: EtcdServer) -> Iterator[EtcdClient]:
    client = etcd_server.client()
    try:
        yield client
    finally:
        client.close()


def test_a_put_etcd_applied_before_answering_nospace_counts_as_done(
    client: EtcdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = client._etcd
    monkeypatch.setattr(raw, "put", answer_nospace(raw.put, apply=True))
    revision = client.put("/ckpt/a", b"filled the quota")
    assert client.get("/ckpt/a") == b"filled the quota"
    assert client.get_version("/ckpt/a") == revision


def test_a_put_refused_with_nospace_raises_and_wrote_nothing(
    client: EtcdClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.put("/ckpt/a", b"before")
    raw = client._etcd
    monkeypatch.setattr(raw, "put", answer_nospace(raw.put, apply=False))
    with pytest.raises(EtcdNoSpace, match="nothing was written"):
        client.put("/ckpt/a", b"refused")
    assert client.get("/ckpt/a") == b"before"


@pytest.mark.parametrize("apply", [True, False])
def test_a_compare_and_set_answered_nospace_is_read_back(
    client: EtcdClient, monkeypatch: pytest.MonkeyPatch, apply: bool
) -> None:
    version = client.put("/ckpt/b", b"v1")
    stub = client._etcd.kvstub
    monkeypatch.setattr(stub, "Txn", answer_nospace(stub.Txn, apply=apply))
    if apply:  # it landed: the compare-and-set succeeded, at the key's new version
        new = client.put_if_version("/ckpt/b", b"v2", version)
        assert new is not None and new > version
        assert client.get_with_version("/ckpt/b") == (b"v2", new)
    else:  # refused before it was applied: the error, and the old value at its version
        with pytest.raises(EtcdNoSpace):
            client.put_if_version("/ckpt/b", b"v2", version)
        assert client.get_with_version("/ckpt/b") == (b"v1", version)
