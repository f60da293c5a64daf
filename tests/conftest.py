"""What every test shares: a bytecode cache for the interpreters the suite starts.

The suite starts a few hundred Python interpreters (shard processes, demo and CLI runs,
client processes). With ``PYTHONDONTWRITEBYTECODE`` set, as on our machines, none of
them could keep its bytecode, so each compiled the whole package from source again
(about 0.35 s of CPU of a 0.8 s start). For this run they write and read it in a
temporary ``PYTHONPYCACHEPREFIX`` (removed at the end): the first compiles, the others
read, and the source tree stays free of ``__pycache__``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_NO_BYTECODE = "PYTHONDONTWRITEBYTECODE"
_CACHE = "PYTHONPYCACHEPREFIX"
_saved = pytest.StashKey[tuple[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(_NO_BYTECODE) or os.environ.get(_CACHE):
        return  # the interpreters keep their bytecode already
    prefix = tempfile.mkdtemp(prefix="shardroute-pyc-")
    config.stash[_saved] = (os.environ.pop(_NO_BYTECODE), prefix)
    os.environ[_CACHE] = prefix


def pytest_unconfigure(config: pytest.Config) -> None:
    saved = config.stash.get(_saved, None)
    if saved is not None:
        no_bytecode, prefix = saved
        os.environ[_NO_BYTECODE] = no_bytecode
        os.environ.pop(_CACHE, None)
        shutil.rmtree(prefix, ignore_errors=True)
