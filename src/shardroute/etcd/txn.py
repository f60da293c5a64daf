"""Builders for raw etcd transactions (:meth:`EtcdClient.txn
<shardroute.etcd.EtcdClient.txn>`): compares over a key or a key range, puts, range
deletes and range reads, as the ``etcdrpc`` messages etcd takes."""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["compare", "delete", "put", "read"]

Target = Literal["create_revision", "mod_revision"]
Result = Literal["EQUAL", "LESS", "GREATER", "NOT_EQUAL"]


def _rpc() -> Any:
    import etcd3.etcdrpc as rpc

    return rpc


def compare(key: str, target: Target, result: Result, value: int, range_end: str = "") -> Any:
    """``target`` of ``key`` (every key in [key, range_end) when given; an empty range
    compares as one absent key) ``result`` ``value``."""
    rpc = _rpc()
    message = rpc.Compare(
        key=key.encode(),
        range_end=range_end.encode(),
        target=getattr(rpc.Compare, target.split("_")[0].upper()),
        result=getattr(rpc.Compare, result),
    )
    setattr(message, target, value)
    return message


def put(key: str, value: bytes, lease: int = 0) -> Any:
    """Write ``key`` (attached to ``lease`` when not 0)."""
    rpc = _rpc()
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value, lease=lease))


def delete(key: str, range_end: str = "") -> Any:
    """Delete ``key`` (every key in [key, range_end) when given)."""
    rpc = _rpc()
    request = rpc.DeleteRangeRequest(key=key.encode(), range_end=range_end.encode())
    return rpc.RequestOp(request_delete_range=request)


def read(key: str, range_end: str = "", *, keys_only: bool = False) -> Any:
    """Read ``key`` (every key in [key, range_end) when given, sorted by key)."""
    rpc = _rpc()
    request = rpc.RangeRequest(
        key=key.encode(),
        range_end=range_end.encode(),
        keys_only=keys_only,
        sort_order=rpc.RangeRequest.ASCEND if range_end else rpc.RangeRequest.NONE,
    )
    return rpc.RequestOp(request_range=request)
