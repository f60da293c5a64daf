"""etcd credentials hygiene (issue 13): the password from a file or the environment,
never in a repr, a log line or an error message; a warning when it would travel in clear
text to an etcd on another machine."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from shardroute import cli
from shardroute.errors import ConfigError
from shardroute.etcd import EtcdOptions
from shardroute.etcd.credentials import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    add_etcd_credential_args,
    etcd_credentials_from_args,
    warn_if_cleartext,
)
from shardroute.server import ServerConfig

SECRET = "s3cret-Pa55word"


def test_no_password_in_any_repr() -> None:
    options = EtcdOptions(("10.0.0.1:2379",), user="root", password=SECRET)
    config = ServerConfig("s1", "chat", ("10.0.0.1:2379",), etcd_user="root", etcd_password=SECRET)
    for text in (repr(options), str(options), repr(config), repr(config.etcd_options())):
        assert SECRET not in text
    assert "user='root'" in repr(options)


def parse(argv: list[str], *, cli_flags: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    if cli_flags:
        add_etcd_credential_args(
            parser, user_flags=("--user", "--etcd-user"), deprecated_password_flag=True
        )
    else:
        add_etcd_credential_args(parser)
    return parser.parse_args(argv)


def test_password_from_a_file_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    other = tmp_path / "other"
    other.write_text("from-env-file")
    args = parse(["--user", "root", "--etcd-password-file", str(path)])
    env = {PASSWORD_FILE_ENV: str(other), PASSWORD_ENV: "from-env"}
    assert etcd_credentials_from_args(args, env) == ("root", SECRET)  # the option wins
    args = parse(["--etcd-user", "root"], cli_flags=False)
    assert etcd_credentials_from_args(args, env) == ("root", "from-env-file")
    assert etcd_credentials_from_args(args, {PASSWORD_ENV: "from-env"}) == ("root", "from-env")
    # No user: no credentials (a password in the environment alone is not used).
    assert etcd_credentials_from_args(parse([]), {PASSWORD_ENV: "x"}) == (None, None)


def test_missing_or_unreadable_passwords_are_clear_errors_that_hide_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a password: --etcd-password-file"):
        etcd_credentials_from_args(parse(["--user", "root"]), {})
    with pytest.raises(ConfigError, match="needs an etcd user"):
        etcd_credentials_from_args(parse(["--etcd-password-file", "x"]), {})
    with pytest.raises(ConfigError, match="cannot read the etcd password file") as info:
        etcd_credentials_from_args(parse(["--user", "u", "--etcd-password-file", "/nope"]), {})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        etcd_credentials_from_args(parse(["--user", "u", "--etcd-password-file", str(empty)]), {})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff" + SECRET.encode())
    with pytest.raises(ConfigError) as info:
        etcd_credentials_from_args(parse(["--user", "u", "--etcd-password-file", str(binary)]), {})
    assert SECRET not in str(info.value) and info.value.__cause__ is None


def test_the_deprecated_password_flag_still_works_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse(["--user", "root", "--password", SECRET])
    assert etcd_credentials_from_args(args, {}) == ("root", SECRET)
    assert "--password is deprecated" in capsys.readouterr().err
    # The environment wins over the flag.
    assert etcd_credentials_from_args(args, {PASSWORD_ENV: "env"}) == ("root", "env")


def test_cli_options_carry_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    args = cli._parser().parse_args(
        ["topology", "--etcd", "127.0.0.1:2379", "--service", "chat", "--user", "root"]
    )
    options = cli._etcd_options(args)
    assert (options.user, options.password) == ("root", SECRET)


@pytest.mark.parametrize(
    ("endpoints", "ca_cert", "warned"),
    [
        (("127.0.0.1:2379", "localhost:2379", "[::1]:2379"), None, False),
        (("10.0.0.5:2379",), None, True),
        (("127.0.0.1:2379", "etcd.internal:2379"), None, True),
        (("10.0.0.5:2379",), "ca.pem", False),
    ],
)
def test_a_password_in_clear_text_to_another_machine_is_warned_about(
    endpoints: tuple[str, ...],
    ca_cert: str | None,
    warned: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "shardroute.etcd")
    options = EtcdOptions(endpoints, user="root", password=SECRET, ca_cert=ca_cert)
    assert warn_if_cleartext(options) is warned
    assert bool(caplog.records) is warned
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert not warn_if_cleartext(EtcdOptions(endpoints, ca_cert=ca_cert))  # no password
