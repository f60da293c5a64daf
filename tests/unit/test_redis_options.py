"""RedisOptions: the session store URLs (redis://, rediss://, redis+cluster://) and the
bad ones, and a password that never shows."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from shardroute.errors import ConfigError, InvalidSessionKey
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


@pytest.mark.parametrize(
    ("session_key", "tag"),
    [
        ("s", "s"),
        ("a}1", "a%7D1"),
        ("a}2", "a%7D2"),
        ("{}", "%7B%7D"),
        ("chat {7}/é", "chat %7B7%7D%2F%C3%A9"),
    ],
)
def test_the_hash_tag_is_the_whole_key(session_key: str, tag: str) -> None:
    # Redis Cluster hashes what lies between the first "{" and the next "}": with the
    # raw key, "a}1" and "a}2" would share the tag "a" (one slot), and "{}" would
    # empty it. The tag is the key's wire form with the braces encoded too.
    store = RedisSessionStore("redis://127.0.0.1:1/0", "chat")
    key = store.key(session_key)
    assert key == f"/shardroute/chat/state/{{{tag}}}"
    assert key_slot(key.encode()) == key_slot(tag.encode())
    store.close()


def test_an_invalid_session_key_is_refused_before_any_io() -> None:
    store = RedisSessionStore("redis://127.0.0.1:1/0", "chat")
    with pytest.raises(InvalidSessionKey):
        store.key("")
    store.close()
