"""One error root: every exception class shardroute defines derives from ShardRouteError
and is exported from the package (issue 10)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import shardroute
from shardroute.errors import ShardRouteError


def defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(shardroute.__path__, "shardroute."):
        if "._proto" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_error_is_under_the_root_and_exported() -> None:
    errors = defined_exceptions()
    assert len(errors) > 20
    outside = [name for name, cls in errors.items() if not issubclass(cls, ShardRouteError)]
    assert outside == []
    hidden = [name for name, cls in errors.items() if cls.__name__ not in shardroute.__all__]
    assert hidden == []
