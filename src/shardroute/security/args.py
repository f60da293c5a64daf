"""Command-line options for TLS and control credentials, shared by ``shardroute`` (the
operator CLI) and ``python -m shardroute.server.run`` (a shard). Secrets never go on a
command line: the control token comes from a file or the environment."""

from __future__ import annotations

import argparse

from shardroute.security.control_auth import ControlAuth, ControlToken
from shardroute.security.tls import TLSConfig

__all__ = ["add_tls_args", "control_auth_from_args", "control_token_from_args", "tls_from_args"]


def add_tls_args(parser: argparse.ArgumentParser, *, server: bool = False) -> None:
    """Add ``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--control-token-file``; for a
    client also ``--tls-server-name`` and ``--tls-allow-plaintext``, for a shard
    ``--control-identity``."""
    group = parser.add_argument_group(
        "TLS and control credentials (docs/security.md)",
        "The control token is read from --control-token-file, else from "
        "$SHARDROUTE_CONTROL_TOKEN_FILE or $SHARDROUTE_CONTROL_TOKEN; never from an argument.",
    )
    peers = "clients" if server else "shards"
    group.add_argument("--tls-ca", metavar="PEM", help=f"CA bundle that {peers} must chain to")
    group.add_argument("--tls-cert", metavar="PEM", help="this side's certificate chain")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument(
        "--control-token-file", metavar="PATH", help="file holding the control-service token"
    )
    if server:
        group.add_argument(
            "--control-identity",
            action="append",
            default=[],
            metavar="PATTERN",
            help="mTLS identity (SAN or CN, fnmatch pattern) allowed to call the control "
            "service (repeatable)",
        )
    else:
        group.add_argument(
            "--tls-server-name", metavar="NAME", help="name to check in shards' certificates"
        )
        group.add_argument(
            "--tls-allow-plaintext",
            action="store_true",
            help="call shards registered without TLS in plaintext",
        )


def tls_from_args(args: argparse.Namespace) -> TLSConfig | None:
    """The :class:`TLSConfig` the options describe (None: no TLS option given)."""
    given = (args.tls_ca, args.tls_cert, args.tls_key, getattr(args, "tls_server_name", None))
    if all(value is None for value in given):
        return None
    return TLSConfig(
        ca=args.tls_ca,
        cert=args.tls_cert,
        key=args.tls_key,
        server_name=getattr(args, "tls_server_name", None),
        allow_plaintext=getattr(args, "tls_allow_plaintext", False),
    )


def control_token_from_args(args: argparse.Namespace) -> ControlToken | None:
    """The control token from ``--control-token-file``, else the environment."""
    if args.control_token_file:
        return ControlToken.from_file(args.control_token_file)
    return ControlToken.from_env()


def control_auth_from_args(args: argparse.Namespace) -> ControlAuth | None:
    """A shard's :class:`ControlAuth` (None: nothing configured, loopback callers only)."""
    token = control_token_from_args(args)
    identities = tuple(args.control_identity)
    if token is None and not identities:
        return None
    return ControlAuth(token=token, allowed_identities=identities)
