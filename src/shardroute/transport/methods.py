"""Read a generated gRPC stub class without I/O: its methods, paths, kinds, codecs.

Generated stubs create their methods in ``__init__(channel)`` by calling
``channel.unary_unary(path, request_serializer=..., response_deserializer=...)`` and
friends. Building the stub once on a recording channel tells us every method, so the
client can then call any shard's channel directly with the same path and codecs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from shardroute.errors import ConfigError

__all__ = ["MethodSpec", "describe_stub"]

Codec = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One RPC of a stub: its attribute name, full path, kind and codecs."""

    name: str
    path: str
    kind: str
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``."""
    request_serializer: Codec
    response_deserializer: Codec


class _RecordingChannel:
    def _record(self, kind: str) -> Callable[..., MethodSpec]:
        def record(
            path: str,
            request_serializer: Codec = None,
            response_deserializer: Codec = None,
            **_ignored: Any,
        ) -> MethodSpec:
            return MethodSpec(
                path.rsplit("/", 1)[-1], path, kind, request_serializer, response_deserializer
            )

        return record

    def __getattr__(self, kind: str) -> Callable[..., MethodSpec]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(kind)
        raise AttributeError(kind)


_described: dict[type[Any], Mapping[str, MethodSpec]] = {}


def describe_stub(stub_class: type[Any]) -> Mapping[str, MethodSpec]:
    """The methods of a generated stub class, by attribute name (cached per class)."""
    found = _described.get(stub_class)
    if found is None:
        found = _described[stub_class] = _describe(stub_class)
    return found


def _describe(stub_class: type[Any]) -> Mapping[str, MethodSpec]:
    try:
        stub = stub_class(_RecordingChannel())
    except Exception as exc:
        raise ConfigError(
            f"{stub_class!r} is not a generated gRPC stub class (it could not be built "
            f"on a channel: {exc})"
        ) from exc
    methods = {name: v for name, v in vars(stub).items() if isinstance(v, MethodSpec)}
    if not methods:
        raise ConfigError(f"{stub_class!r} has no gRPC methods: is it a generated stub class?")
    return MappingProxyType(methods)
