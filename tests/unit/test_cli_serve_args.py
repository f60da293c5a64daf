"""``shardroute serve``'s options and class import, without a shard (issue 16): --listen,
and a module that raises while it is imported is one line naming its file and line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from shardroute._cli_serve import add_serve_arguments, import_class, listen_address
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
