"""``shardroute serve``'s options and class import, without a shard (issue 16): --listen,
a taken port's reason, --wait-for-etcd, a module that raises while it is imported is one
line naming its file and line; ``drain`` takes ``--shard-id`` as ``serve`` does."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import pytest

from shardroute._cli_serve import add_serve_arguments, import_class, listen_address
from shardroute._listen import cannot_listen, host_port
from shardroute.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, positional=True)
    return parser.parse_args(["m:C", "--service", "c", "--shard-id", "s1", *argv])


def test_listen_sets_host_and_port() -> None:
    assert listen_address(_args()) == ("127.0.0.1", 0)
    assert listen_address(_args("--listen", "0.0.0.0:7001")) == ("0.0.0.0", 7001)
    assert listen_address(_args("--listen", "[::1]:7001")) == ("::1", 7001)
    assert listen_address(_args("--host", "10.0.0.5", "--port", "7")) == ("10.0.0.5", 7)


@pytest.mark.parametrize("bad", ["7001", "host:", ":7001", "host:port"])
def test_a_bad_listen_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="--listen must be HOST:PORT"):
        listen_address(_args("--listen", bad))


def test_listen_and_port_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both"):
        listen_address(_args("--listen", "127.0.0.1:7001", "--port", "7002"))


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("x = 1\nraise RuntimeError('no model')\n", ["RuntimeError: no model", "line 2"]),
        ("import no_such_dependency_xyz\n", ["failed", "no_such_dependency_xyz"]),
    ],
    ids=["raises", "missing-dependency"],
)
def test_a_module_that_fails_to_import_is_one_line_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, said: list[str]
) -> None:
    """An exception names its place; a missing dependency is not called a missing module."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"failing_shard_{len(source)}"
    (tmp_path / f"{name}.py").write_text(source)
    with pytest.raises(ConfigError) as info:
        import_class(f"{name}:Shard", str(tmp_path))
    message = str(info.value)
    assert f"importing {name!r} failed" in message and "\n" not in message
    assert all(part in message for part in said), message
    assert sys.path[0] == str(tmp_path)


def test_cannot_listen_names_the_cause() -> None:
    """A taken port, an address of another machine, a host that does not resolve: each
    says which (the old check said "another program has it" for all three)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = cannot_listen("127.0.0.1", port)
        assert said == "Address already in use: another process listens there"
        assert cannot_listen("localhost", port) == said  # every address localhost names
    assert cannot_listen("127.0.0.1", 0) is None
    said = cannot_listen("192.0.2.1", 7001)  # TEST-NET-1: never this machine's
    assert said is not None and "192.0.2.1 is not an address of this machine" in said
    said = cannot_listen("no-such-host.invalid", 7001)
    assert said is not None and "'no-such-host.invalid' does not resolve" in said


def test_host_port_brackets_ipv6() -> None:
    assert host_port("127.0.0.1", 7001) == "127.0.0.1:7001"
    assert host_port("::1", 7001) == "[::1]:7001"
    assert host_port("[::1]", 7001) == "[::1]:7001"


def test_wait_for_etcd_is_an_option_of_serve() -> None:
    assert not _args().wait_for_etcd
    assert _args("--wait-for-etcd").wait_for_etcd


def test_drain_takes_the_shard_id_as_serve_names_it() -> None:
    """``shardroute serve --shard-id s2``, then ``shardroute drain --shard-id s2``."""
    from shardroute.cli import _parser

    common = ["drain", "--etcd", "127.0.0.1:2379", "--service", "counter"]
    assert _parser().parse_args([*common, "--shard-id", "s2"]).shard == "s2"
    assert _parser().parse_args([*common, "--shard", "s2"]).shard == "s2"


def test_each_command_says_what_it_does_and_its_exit_codes() -> None:
    """``shardroute drain --help`` once listed options only: not what drain does, nor
    that it exits 3 when sessions were left behind (docs/operations.md)."""
    from shardroute.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        text = " ".join(command.format_help().split())
        assert command.description and command.description in text, name
        assert "exit codes: 0" in text and " 2 an error told in one line" in text, name
    assert "3 sessions left behind" in " ".join(commands.choices["drain"].format_help().split())
    assert "1 a move failed" in " ".join(commands.choices["rebalance"].format_help().split())
