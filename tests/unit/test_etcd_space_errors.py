"""etcd's NOSPACE answer becomes EtcdNoSpace at the boundary; the embedded etcd's space flags."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import shardroute
from shardroute import errors
from shardroute.errors import ConfigError, EtcdNoSpace, EtcdUnavailable, ShardRouteError
from shardroute.etcd._translate import _from_rpc_error, _translated
from shardroute.testing.etcd import DEFAULT_QUOTA_BACKEND_BYTES, EtcdServer

NOSPACE = "etcdserver: mvcc: database space exceeded"


class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_database_space_exceeded_is_etcd_no_space() -> None:
    error = _from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE))
    assert isinstance(error, EtcdNoSpace)
    assert isinstance(error, EtcdUnavailable) and isinstance(error, ShardRouteError)
    assert error.details == NOSPACE
    message = str(error)
    assert "out of space (NOSPACE alarm" in message
    assert "nothing was written" in message and "data already saved in etcd is safe" in message
    assert "compact" in message and "defragment" in message
    assert "etcdctl alarm disarm" in message and "docs/operations.md" in message


def test_other_resource_exhausted_stays_plain_unavailable() -> None:
    error = _from_rpc_error(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")
    )
    assert type(error) is EtcdUnavailable
    assert "RESOURCE_EXHAUSTED" in str(error)


def test_boundary_raises_it_with_the_grpc_error_as_cause() -> None:
    original = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE)

    @_translated
    def put() -> None:
        raise original

    with pytest.raises(EtcdNoSpace) as info:
        put()
    assert info.value.__cause__ is original


def test_exported_like_its_siblings() -> None:
    assert "EtcdNoSpace" in errors.__all__ and "EtcdNoSpace" in shardroute.__all__
    assert shardroute.EtcdNoSpace is EtcdNoSpace


def test_embedded_etcd_compacts_and_has_a_quota_by_default(tmp_path: Path) -> None:
    server = EtcdServer("/bin/true", data_dir=str(tmp_path))
    flags = server._space_args()
    assert "--auto-compaction-mode=periodic" in flags
    assert "--auto-compaction-retention=5s" in flags
    assert f"--quota-backend-bytes={DEFAULT_QUOTA_BACKEND_BYTES}" in flags
    assert DEFAULT_QUOTA_BACKEND_BYTES == 256 * 1024 * 1024
    custom = EtcdServer(
        "/bin/true", data_dir=str(tmp_path), auto_compaction=None, quota_backend_bytes=None
    )
    assert custom._space_args() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"auto_compaction": ("hourly", "1h")},
        {"auto_compaction": ("periodic", "")},
        {"quota_backend_bytes": 0},
        {"quota_backend_bytes": True},
    ],
)
def test_bad_space_options_are_config_errors(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EtcdServer("/bin/true", data_dir=str(tmp_path), **kwargs)  # type: ignore[arg-type]
