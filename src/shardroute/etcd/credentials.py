"""etcd credentials for commands (``shardroute``, ``python -m shardroute.server.run``):
the password comes from a file or the environment, never from the command line, where
every user of the machine can read it (``ps``, ``/proc/<pid>/cmdline``, shell history).

Where the password comes from, first found wins: ``--etcd-password-file PATH``, then
``$SHARDROUTE_ETCD_PASSWORD_FILE`` (a path), then ``$SHARDROUTE_ETCD_PASSWORD`` (the
value), then the deprecated ``--password`` of ``shardroute`` (with a warning). It is used
only with a user (``--user`` / ``--etcd-user``). docs/operations.md, "etcd credentials".
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from shardroute.errors import ConfigError
from shardroute.etcd.options import EtcdOptions, parse_endpoint

__all__ = [
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "add_etcd_credential_args",
    "etcd_credentials_from_args",
    "read_password_file",
    "warn_if_cleartext",
]

log = logging.getLogger("shardroute.etcd")

PASSWORD_ENV = "SHARDROUTE_ETCD_PASSWORD"
PASSWORD_FILE_ENV = "SHARDROUTE_ETCD_PASSWORD_FILE"


def read_password_file(path: str) -> str:
    """The password in the file at ``path`` (one trailing newline removed)."""
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        # The error names the file, never its content.
        raise ConfigError(
            f"cannot read the etcd password file {path!r}: {type(exc).__name__}"
        ) from None
    password = password.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(f"the etcd password file {path!r} is empty")
    return password


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may be anywhere
        return False


def warn_if_cleartext(options: EtcdOptions) -> bool:
    """Log a warning when ``options`` would send a password in clear text (no TLS:
    ``ca_cert`` unset) to an etcd that is not on this machine; returns whether it did."""
    if options.password is None or options.ca_cert is not None:
        return False
    remote = [e for e in options.endpoints if not _loopback(parse_endpoint(e)[0])]
    if remote:
        log.warning(
            "the etcd password of user %r goes in clear text to %s (no TLS): anyone on "
            "the network path can read it; give the etcd CA certificate (ca_cert, "
            "--ca-cert) to use TLS",
            options.user,
            ", ".join(remote),
        )
    return bool(remote)


def add_etcd_credential_args(
    parser: argparse.ArgumentParser,
    *,
    user_flags: Sequence[str] = ("--etcd-user",),
    deprecated_password_flag: bool = False,
) -> None:
    """Add the etcd user option (``user_flags``, dest ``etcd_user``) and
    ``--etcd-password-file``; with ``deprecated_password_flag``, the old ``--password``
    (still read, with a warning)."""
    parser.add_argument(*user_flags, dest="etcd_user", help="etcd user")
    parser.add_argument(
        "--etcd-password-file",
        metavar="PATH",
        help=f"file holding the etcd password (else ${PASSWORD_FILE_ENV} or ${PASSWORD_ENV})",
    )
    if deprecated_password_flag:
        parser.add_argument(
            "--password",
            dest="etcd_password_argument",
            help="deprecated: visible to every user of the machine; use --etcd-password-file",
        )


def etcd_credentials_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> tuple[str | None, str | None]:
    """``(user, password)`` for :class:`~shardroute.etcd.EtcdOptions` from the options of
    :func:`add_etcd_credential_args` and the environment; ``(None, None)`` without a user.
    """
    env = os.environ if environ is None else environ
    user: str | None = args.etcd_user
    path: str | None = args.etcd_password_file
    argument: str | None = getattr(args, "etcd_password_argument", None)
    if argument is not None:
        print(
            "shardroute: warning: --password is deprecated: a password on the command line "
            f"is visible to every user of this machine; use --etcd-password-file or "
            f"${PASSWORD_ENV}",
            file=sys.stderr,
        )
    if user is None:
        if path is not None or argument is not None:
            raise ConfigError("an etcd password needs an etcd user (--user / --etcd-user)")
        return None, None
    if path is not None:
        return user, read_password_file(path)
    if env.get(PASSWORD_FILE_ENV):
        return user, read_password_file(env[PASSWORD_FILE_ENV])
    if env.get(PASSWORD_ENV):
        return user, env[PASSWORD_ENV]
    if argument is not None:
        return user, argument
    raise ConfigError(
        f"etcd user {user!r} needs a password: --etcd-password-file PATH, "
        f"${PASSWORD_FILE_ENV} or ${PASSWORD_ENV}"
    )
