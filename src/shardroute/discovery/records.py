"""JSON values stored in etcd: parsing (strict, with clear reasons) and encoding.

A record written by hand with etcdctl goes through exactly the same parser as one
written by shardroute. See docs/etcd-schema.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from shardroute.errors import MalformedRecord
from shardroute.model import LoadReport, Override, Shard, ShardState

__all__ = [
    "MAX_CAPACITY",
    "MAX_COUNT",
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_WEIGHT",
    "decode_json",
    "encode_load",
    "encode_override",
    "encode_shard",
    "load_to_dict",
    "parse_load",
    "parse_override",
    "parse_shard",
    "shard_to_dict",
]

SCHEMA_VERSION = 1

# Bounds on what a record read from etcd may hold (docs/etcd-schema.md, "Bounds"): a value
# outside them is malformed (skipped, logged once, counted), never parsed at any cost.
MAX_RECORD_BYTES = 64 * 1024
"""The largest value parsed (shard record, load report, override, config)."""
MAX_JSON_DEPTH = 32
"""The deepest nesting of JSON objects and arrays in a value."""
MAX_WEIGHT = 100.0
"""The largest shard weight: the ring holds ``weight * vnodes_per_weight`` points per
shard (16,000 at the default 160 per unit of weight)."""
MAX_CAPACITY = 1_000_000
"""The largest shard capacity (concurrent calls)."""
MAX_COUNT = 1_000_000_000
"""The largest count in a load report (``inflight``, ``queue_depth``, ``sessions``)."""
_MAX_INT64 = 2**63 - 1


def decode_json(key: str, raw: bytes) -> Mapping[str, Any]:
    """Decode a JSON object of at most :data:`MAX_RECORD_BYTES` and :data:`MAX_JSON_DEPTH`
    levels, or raise :class:`MalformedRecord` naming the key."""
    if len(raw) > MAX_RECORD_BYTES:
        raise MalformedRecord(key, f"{len(raw)} bytes, over the limit of {MAX_RECORD_BYTES}")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise MalformedRecord(key, f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(key, f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise MalformedRecord(key, f"expected a JSON object, got {type(value).__name__}")
    if _too_deep(value):
        raise MalformedRecord(key, f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _too_deep(value: object) -> bool:
    """Whether ``value`` nests containers deeper than :data:`MAX_JSON_DEPTH` (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _number(key: str, obj: Mapping[str, Any], name: str, default: float) -> float:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedRecord(key, f"{name!r} must be a finite number, got {value!r}")
    return float(value)


def _int(key: str, obj: Mapping[str, Any], name: str, default: int) -> int:
    value = obj.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRecord(key, f"{name!r} must be an integer, got {value!r}")
    return value


def _str(key: str, obj: Mapping[str, Any], name: str, default: str) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str) or not _utf8(value):
        raise MalformedRecord(key, f"{name!r} must be a string, got {value!r}")
    return value


def _utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates, ``"\\ud800"``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _at_most(key: str, name: str, value: float, limit: float) -> None:
    if value > limit:
        raise MalformedRecord(key, f"{name!r} must be <= {limit!r}, got {value!r}")


def _check_address(key: str, address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MalformedRecord(key, f"'address' must be 'host:port', got {address!r}")
    return address


def parse_shard(key: str, shard_id: str, raw: bytes) -> Shard:
    """Parse the value of ``shards/<shard_id>``. Unknown fields are ignored."""
    obj = decode_json(key, raw)
    if "address" not in obj:
        raise MalformedRecord(key, "missing required field 'address'")
    address = _check_address(key, _str(key, obj, "address", ""))
    weight = _number(key, obj, "weight", 1.0)
    if weight <= 0:
        raise MalformedRecord(key, f"'weight' must be > 0, got {weight!r}")
    _at_most(key, "weight", weight, MAX_WEIGHT)
    capacity = _int(key, obj, "capacity", 64)
    if capacity <= 0:
        raise MalformedRecord(key, f"'capacity' must be > 0, got {capacity!r}")
    _at_most(key, "capacity", capacity, MAX_CAPACITY)
    state_text = _str(key, obj, "state", ShardState.ACTIVE.value)
    try:
        state = ShardState(state_text)
    except ValueError:
        allowed = ", ".join(s.value for s in ShardState)
        raise MalformedRecord(
            key, f"'state' must be one of {allowed}, got {state_text!r}"
        ) from None
    labels = obj.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _utf8(k) and _utf8(v)
        for k, v in labels.items()
    ):
        raise MalformedRecord(key, f"'labels' must be an object of strings, got {labels!r}")
    lease = _int(key, obj, "lease", 0)
    if lease < 0:
        raise MalformedRecord(key, f"'lease' must be >= 0, got {lease!r}")
    _at_most(key, "lease", lease, _MAX_INT64)
    tls = obj.get("tls", False)
    if not isinstance(tls, bool):
        raise MalformedRecord(key, f"'tls' must be true or false, got {tls!r}")
    schema = _int(key, obj, "schema", SCHEMA_VERSION)
    if schema < 1:
        raise MalformedRecord(key, f"'schema' must be >= 1, got {schema!r}")
    _at_most(key, "schema", schema, _MAX_INT64)
    return Shard(
        id=shard_id,
        address=address,
        zone=_str(key, obj, "zone", ""),
        region=_str(key, obj, "region", ""),
        weight=weight,
        capacity=capacity,
        state=state,
        labels=MappingProxyType(dict(labels)),
        schema=schema,
        lease=lease,
        tls=tls,
    )


def parse_load(key: str, raw: bytes) -> LoadReport:
    """Parse the value of ``load/<shard_id>``. Missing fields default to 0."""
    obj = decode_json(key, raw)
    report = LoadReport(
        inflight=_int(key, obj, "inflight", 0),
        queue_depth=_int(key, obj, "queue_depth", 0),
        sessions=_int(key, obj, "sessions", 0),
        latency_ms_p50=_number(key, obj, "latency_ms_p50", 0.0),
        latency_ms_p95=_number(key, obj, "latency_ms_p95", 0.0),
        ts=_number(key, obj, "ts", 0.0),
        calls_total=_int(key, obj, "calls_total", 0),
    )
    for name in (
        "inflight",
        "queue_depth",
        "sessions",
        "latency_ms_p50",
        "latency_ms_p95",
        "calls_total",
    ):
        if getattr(report, name) < 0:
            raise MalformedRecord(key, f"{name!r} must be >= 0, got {getattr(report, name)!r}")
    for name in ("inflight", "queue_depth", "sessions"):
        _at_most(key, name, getattr(report, name), MAX_COUNT)
    _at_most(key, "calls_total", report.calls_total, _MAX_INT64)
    return report


def shard_to_dict(shard: Shard) -> dict[str, Any]:
    """The JSON object of a shard record (without its id, which is in the key)."""
    return {
        "address": shard.address,
        "zone": shard.zone,
        "region": shard.region,
        "weight": shard.weight,
        "capacity": shard.capacity,
        "state": shard.state.value,
        "labels": dict(shard.labels),
        "schema": shard.schema,
        "lease": shard.lease,
        "tls": shard.tls,
    }


def load_to_dict(report: LoadReport) -> dict[str, Any]:
    """The JSON object of a load report."""
    return {
        "inflight": report.inflight,
        "queue_depth": report.queue_depth,
        "sessions": report.sessions,
        "latency_ms_p50": report.latency_ms_p50,
        "latency_ms_p95": report.latency_ms_p95,
        "ts": report.ts,
        "calls_total": report.calls_total,
    }


def encode_shard(shard: Shard) -> bytes:
    """Encode a shard record for etcd."""
    return json.dumps(shard_to_dict(shard), separators=(",", ":"), sort_keys=True).encode()


def encode_load(report: LoadReport) -> bytes:
    """Encode a load report for etcd."""
    return json.dumps(load_to_dict(report), separators=(",", ":"), sort_keys=True).encode()


def parse_override(key: str, raw: bytes, version: int = 0) -> Override:
    """Parse the value of ``sessions/<session_key>``: ``{"owner", "epoch", "moving_to"}``."""
    obj = decode_json(key, raw)
    owner = _str(key, obj, "owner", "")
    if not owner:
        raise MalformedRecord(key, "missing required field 'owner'")
    epoch = _int(key, obj, "epoch", 0)
    if epoch < 1:
        raise MalformedRecord(key, f"'epoch' must be >= 1, got {epoch!r}")
    _at_most(key, "epoch", epoch, _MAX_INT64)
    return Override(owner, epoch, _str(key, obj, "moving_to", ""), version)


def encode_override(override: Override) -> bytes:
    """Encode a session override for etcd (``version`` is etcd's, not stored)."""
    obj: dict[str, Any] = {"owner": override.owner, "epoch": override.epoch}
    if override.moving_to:
        obj["moving_to"] = override.moving_to
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
