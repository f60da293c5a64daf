"""RedisOptions: the session store URLs (redis://, rediss://, redis+cluster://) and the
bad ones, and a password that never shows."""

from __future__ import annotations

import pytest

from shardroute.errors import ConfigError
from shardroute.sessions import RedisOptions, RedisSessionStore


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h", RedisOptions((("h", 6379),))),
        ("redis://h:7000/3", RedisOptions((("h", 7000),), db=3)),
        ("rediss://h:6380", RedisOptions((("h", 6380),), tls=True)),
        (
            "redis://app:p%40ss@h:1/0",
            RedisOptions((("h", 1),), username="app", password="p@ss"),
        ),
        ("redis://:secret@h", RedisOptions((("h", 6379),), password="secret")),
        (
            "redis+cluster://a:1,b:2,[::1]:3",
            RedisOptions((("a", 1), ("b", 2), ("::1", 3)), cluster=True),
        ),
        (
            "rediss+cluster://a:1?ca_cert=/ca.pem&timeout=0.5",
            RedisOptions((("a", 1),), cluster=True, tls=True, ca_cert="/ca.pem", timeout=0.5),
        ),
    ],
)
def test_urls(url: str, expected: RedisOptions) -> None:
    assert RedisOptions.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://h:6379",
        "redis:/h",
        "redis://",
        "redis://h:0",
        "redis://h:99999",
        "redis://h:port",
        "redis://h/x",
        "redis://a:1,b:2",
        "redis+cluster://a:1/2",
        "redis://h?color=red",
        "redis://h?timeout=soon",
        "redis://h?timeout=0",
        "redis://h?ca_cert=/ca.pem",
        "rediss://h?cert_cert=/c.pem",
        "redis://user:@h?bad=1",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        RedisOptions.from_url(url)


def test_the_password_never_shows() -> None:
    options = RedisOptions.from_url("rediss://app:hunter2@h:1/0")
    assert "hunter2" not in repr(options)
    assert options.redacted() == "rediss://app:***@h:1/0"
    store = RedisSessionStore(options, "chat")
    assert "hunter2" not in repr(store)
    with pytest.raises(ConfigError) as info:
        RedisOptions.from_url("redis://app:hunter2@h:1/nope")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_construction_does_no_io() -> None:
    store = RedisSessionStore("redis+cluster://127.0.0.1:1,127.0.0.1:2", "chat")
    assert store.key("s") == "/shardroute/chat/state/{s}"
    store.close()
