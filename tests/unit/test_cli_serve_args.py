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


def test_a_module_that_raises_is_one_line_with_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "raising_shard_module.py").write_text("x = 1\nraise RuntimeError('no model')\n")
    with pytest.raises(ConfigError) as info:
        import_class("raising_shard_module:Shard", str(tmp_path))
    message = str(info.value)
    assert "RuntimeError: no model" in message and "line 2" in message
    assert "\n" not in message and str(tmp_path) in sys.path[0]


def test_a_missing_dependency_is_not_called_a_missing_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "needs_dep_module.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError) as info:
        import_class("needs_dep_module:Shard", str(tmp_path))
    assert "importing 'needs_dep_module' failed" in str(info.value)
    assert "no_such_dependency_xyz" in str(info.value)
