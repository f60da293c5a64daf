"""The recipes in docs/ run as written, against real etcd and real shard processes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shardroute.testing.cluster import ShardCluster
from shardroute.testing.counter import COUNTER_SHARD_CLASS, tags_of

CLIENT_MD = Path(__file__).resolve().parents[2] / "docs" / "client.md"


@pytest.fixture
def shard_server_class() -> str:
    return COUNTER_SHARD_CLASS


@pytest.fixture
def shard_service() -> str:
    return "counter"


@pytest.fixture
def shard_count() -> int:
    return 2


def test_the_non_idempotent_write_recipe_runs_and_applies_the_write_once(
    etcd_endpoint: str, shard_cluster: ShardCluster
) -> None:
    """docs/client.md, "Non-idempotent writes and OutcomeUnknown: a recipe", step 1."""
    recipe = re.search(
        r"a recipe\n.*?```python\n(from shardroute import RetryPolicy.*?)```",
        CLIENT_MD.read_text(),
        re.S,
    )
    assert recipe is not None, "the recipe's code block is gone from docs/client.md"
    code = recipe.group(1)
    assert '"127.0.0.1:2379"' in code
    scope: dict[str, Any] = {}
    exec(code.replace('"127.0.0.1:2379"', repr(etcd_endpoint)), scope)
    client = scope["client"]
    try:
        assert scope["count"] == 1  # a new session: one tag added
        reply = scope["counter"].Get(b"", session_key="cart-42", idempotent=True)
        assert tags_of(reply) == ["order-17"]
    finally:
        client.close()
