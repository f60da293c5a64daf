"""Translating etcd and gRPC failures into shardroute's errors, once, at the boundary."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import grpc

from shardroute.errors import (
    Compacted,
    ConfigError,
    EtcdNoSpace,
    EtcdUnavailable,
    ShardRouteError,
)

P = ParamSpec("P")
R = TypeVar("R")


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Translate etcd/gRPC failures into EtcdUnavailable (or Compacted) at the boundary."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import etcd3.exceptions as etcd_exc

        try:
            return fn(*args, **kwargs)
        except ShardRouteError:
            raise
        except etcd_exc.RevisionCompactedError as exc:
            raise Compacted(exc.compacted_revision) from exc
        except grpc.RpcError as exc:
            error = _from_rpc_error(exc)
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                # An expired auth token: authenticate again on the next call.
                forget = getattr(args[0], "_forget_connection", None) if args else None
                if forget is not None:
                    forget()
            raise error from exc
        except (etcd_exc.Etcd3Exception, ValueError, OSError) as exc:
            raise EtcdUnavailable(f"etcd is unreachable: {exc or type(exc).__name__}") from exc

    return wrapper


def _from_rpc_error(exc: grpc.RpcError) -> ShardRouteError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code is grpc.StatusCode.OUT_OF_RANGE and "compacted" in (details or ""):
        return Compacted(0)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "space exceeded" in (details or ""):
        return EtcdNoSpace(details or "")
    if code is grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in (details or ""):
        return ConfigError(f"etcd refused the user name or password: {details}")
    if code is grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in (details or ""):
        return ConfigError("etcd has authentication enabled: pass a user and password")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return ConfigError(
            f"etcd refused the operation ({details}): the etcd user's role does not cover "
            "this key; nothing was written. Grant the role the key prefixes listed in "
            "docs/security.md ('etcd RBAC')"
        )
    return EtcdUnavailable(f"etcd call failed: {code.name if code else 'error'}: {details}")


def _version_compare(ops: Any, key: str, expected_version: int) -> Any:
    """The etcd compare for "key is at ``expected_version``" (0: the key is absent)."""
    if isinstance(expected_version, bool) or expected_version < 0:
        raise ConfigError(f"expected_version must be an int >= 0, got {expected_version!r}")
    if expected_version == 0:
        return ops.create(key) == 0
    return ops.mod(key) == expected_version


def _is_lease_not_found(exc: grpc.RpcError) -> bool:
    """etcd's answer to a put naming a lease it does not know ("requested lease not found")."""
    return (
        isinstance(exc, grpc.Call)
        and exc.code() is grpc.StatusCode.NOT_FOUND
        and "lease not found" in (exc.details() or "")
    )
