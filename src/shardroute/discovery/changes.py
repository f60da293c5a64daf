"""Pure functions that turn etcd key changes into new :class:`Topology` snapshots.

Nothing here does I/O or mutates its input: each call returns a new snapshot (or the
same object when nothing changed), so a source publishes it with one reference swap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from shardroute.discovery.keys import KeyKind, KeySchema, key_text
from shardroute.discovery.records import decode_json, parse_load, parse_override, parse_shard
from shardroute.errors import InvalidSessionKey, MalformedRecord
from shardroute.model import LoadReport, Override, Shard, Topology
from shardroute.session_keys import decode_session_key

__all__ = ["KeyChange", "apply_changes", "build_topology"]


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One etcd event: a put (``value`` is bytes) or a delete (``value`` is None)."""

    key: str
    value: bytes | None
    revision: int


def build_topology(
    schema: KeySchema,
    items: Iterable[tuple[str, bytes]] | Iterable[tuple[str, bytes, int]],
    revision: int,
    previous: Topology | None = None,
    *,
    include_sessions: bool = False,
) -> tuple[Topology, list[MalformedRecord]]:
    """A snapshot from a full read of the service's keys at ``revision``.

    ``previous`` (the snapshot being replaced on a resync) keeps ``shards_revision``
    stable when the shard records did not change, so derived caches survive.
    """
    empty = Topology(service=schema.service, config=previous.config if previous else None)
    changes = [
        KeyChange(item[0], item[1], item[2] if len(item) > 2 else revision) for item in items
    ]
    topology, errors = _apply(empty, schema, changes, revision, include_sessions)
    if previous is not None and topology.shards == previous.shards:
        topology = replace(
            topology, shards=previous.shards, shards_revision=previous.shards_revision
        )
    return topology, errors


def apply_changes(
    topology: Topology,
    schema: KeySchema,
    changes: Iterable[KeyChange],
    *,
    include_sessions: bool = False,
) -> tuple[Topology, list[MalformedRecord]]:
    """Apply watch events in order. Events at or below ``topology.revision`` are dropped
    (a resumed watch may repeat them). Returns the new snapshot and the malformed
    records met on the way (already skipped).
    """
    fresh = [c for c in changes if c.revision > topology.revision]
    if not fresh:
        return topology, []
    return _apply(topology, schema, fresh, max(c.revision for c in fresh), include_sessions)


def _apply(
    topology: Topology,
    schema: KeySchema,
    changes: list[KeyChange],
    revision: int,
    include_sessions: bool = False,
) -> tuple[Topology, list[MalformedRecord]]:
    shards: dict[str, Shard] | None = None
    loads: dict[str, LoadReport] | None = None
    overrides: dict[str, Override] | None = None
    config = topology.config
    malformed = set(topology.malformed)
    errors: list[MalformedRecord] = []
    for change in changes:
        kind, name = schema.classify(change.key)
        if kind in (KeyKind.OTHER, KeyKind.STATE) or (
            kind is KeyKind.SESSION and not include_sessions
        ):
            continue
        key = key_text(change.key)  # the key itself when it is UTF-8 (almost always)
        malformed.discard(key)
        try:
            if key is not change.key:  # etcd keys are bytes: this one is not UTF-8
                if change.value is None:
                    continue
                raise MalformedRecord(key, "the key is not UTF-8")
            if kind is KeyKind.SHARD:
                if shards is None:
                    shards = dict(topology.shards)
                if change.value is None:
                    shards.pop(name, None)
                else:
                    shards.pop(name, None)  # a malformed update removes the old record too
                    shards[name] = parse_shard(change.key, name, change.value)
            elif kind is KeyKind.LOAD:
                if loads is None:
                    loads = dict(topology.loads)
                if change.value is None:
                    loads.pop(name, None)
                else:
                    loads.pop(name, None)
                    loads[name] = parse_load(change.key, change.value)
            elif kind is KeyKind.SESSION:
                if overrides is None:
                    overrides = dict(topology.overrides)
                name = _session_key(change.key, name)
                overrides.pop(name, None)
                if change.value is not None:
                    overrides[name] = parse_override(change.key, change.value, change.revision)
            elif kind is KeyKind.CONFIG:
                config = (
                    None if change.value is None else _freeze(decode_json(change.key, change.value))
                )
        except MalformedRecord as exc:
            malformed.add(key)
            errors.append(exc)
    new_shards = topology.shards
    shards_revision = topology.shards_revision
    if shards is not None and shards != dict(topology.shards):
        new_shards = MappingProxyType(dict(sorted(shards.items())))
        shards_revision = revision
    new_loads = topology.loads if loads is None else MappingProxyType(loads)
    new_overrides = topology.overrides if overrides is None else MappingProxyType(overrides)
    return (
        replace(
            topology,
            revision=max(revision, topology.revision),
            shards=new_shards,
            loads=new_loads,
            config=config,
            shards_revision=shards_revision,
            malformed=frozenset(malformed),
            overrides=new_overrides,
        ),
        errors,
    )


def _session_key(key: str, wire: str) -> str:
    try:
        return decode_session_key(wire)
    except InvalidSessionKey as exc:
        raise MalformedRecord(key, str(exc)) from None


def _freeze(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(obj))
