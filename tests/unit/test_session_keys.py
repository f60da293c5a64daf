"""Session keys (issue 13): any UTF-8 string of 1..512 bytes, one reversible wire form for
gRPC metadata and etcd keys that leaves today's ordinary keys unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_client_hot_path import EchoStub, FakeChannel

from shardroute import metadata
from shardroute.client import ShardClient
from shardroute.discovery.changes import KeyChange, apply_changes
from shardroute.discovery.keys import KeySchema
from shardroute.discovery.memory import InMemoryTopologySource
from shardroute.errors import ConfigError, InvalidSessionKey
from shardroute.model import Shard, Topology
from shardroute.session_keys import (
    MAX_SESSION_KEY_BYTES,
    decode_session_key,
    encode_session_key,
    wire_form,
)
from shardroute.transport import ChannelPool

PRINTABLE_ASCII = {chr(c) for c in range(0x20, 0x7F)}

utf8_keys = st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=MAX_SESSION_KEY_BYTES
).filter(lambda k: len(k.encode()) <= MAX_SESSION_KEY_BYTES)


@given(utf8_keys)
def test_any_utf8_key_round_trips_through_printable_ascii_without_slash(key: str) -> None:
    wire = encode_session_key(key)
    assert set(wire) <= PRINTABLE_ASCII and "/" not in wire
    assert wire == wire.strip(" ")  # no surrounding space for a header to lose
    assert decode_session_key(wire) == key
    assert wire_form(key) == wire


@pytest.mark.parametrize("key", ["conv-1", "user 42", "a.b_c:d@e+f=g~h", "x" * 512, "[1,2]"])
def test_ordinary_keys_are_their_own_wire_form(key: str) -> None:
    assert encode_session_key(key) == key
    assert KeySchema("chat").session(key) == f"/shardroute/chat/sessions/{key}"


@pytest.mark.parametrize(
    ("key", "wire"),
    [
        ("user/42", "user%2F42"),
        (" padded ", "%20padded%20"),
        ("inner space", "inner space"),
        ("café", "caf%C3%A9"),
        ("100%", "100%25"),
        ("a%2Fb", "a%252Fb"),
        ("tab\there", "tab%09here"),
        ("🎉", "%F0%9F%8E%89"),
    ],
)
def test_wire_forms(key: str, wire: str) -> None:
    assert encode_session_key(key) == wire
    assert decode_session_key(wire) == key
    schema = KeySchema("chat")
    assert schema.session(key) == f"/shardroute/chat/sessions/{wire}"
    assert schema.state(key) == f"/shardroute/chat/state/{wire}"


def test_the_shard_also_takes_slashes_and_inner_spaces_unencoded() -> None:
    assert decode_session_key("user/42") == "user/42"
    assert decode_session_key("hello world") == "hello world"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "must not be empty"),
        ("x" * 513, "513 UTF-8 bytes"),
        ("é" * 257, "514 UTF-8 bytes"),
        ("lone \ud800", "not valid UTF-8"),
        (None, "must be a string"),
        (b"bytes", "must be a string"),
    ],
)
def test_invalid_keys_are_refused_with_a_clear_error(key: Any, reason: str) -> None:
    with pytest.raises(InvalidSessionKey, match=reason) as info:
        encode_session_key(key)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(InvalidSessionKey):
        KeySchema("chat").session(key)


@pytest.mark.parametrize("wire", ["%", "%G1", "a%2", "%C3", "%FF", "é%20", "%00" * 513])
def test_malformed_wire_forms_are_refused(wire: str) -> None:
    with pytest.raises(InvalidSessionKey):
        decode_session_key(wire)
    with pytest.raises(InvalidSessionKey):
        metadata.get_session_key([(metadata.SESSION_KEY, wire)])


def test_overrides_in_etcd_are_keyed_by_the_decoded_session_key() -> None:
    schema = KeySchema("chat")
    changes = [
        KeyChange(schema.session("user/42"), b'{"owner": "s1", "epoch": 2}', 1),
        KeyChange(schema.prefix + "sessions/%ZZ", b'{"owner": "s1", "epoch": 2}', 2),
    ]
    topology, errors = apply_changes(Topology("chat"), schema, changes, include_sessions=True)
    assert topology.overrides["user/42"].owner == "s1"
    assert topology.malformed == {schema.prefix + "sessions/%ZZ"} and len(errors) == 1


@pytest.fixture
def client() -> Any:
    source = InMemoryTopologySource("t", [Shard(f"s{i}", f"s{i}:1") for i in range(3)])
    client = ShardClient(source, timeout=5)
    seen: list[Any] = []
    failing: dict[str, Any] = {}
    client._core.channels = ChannelPool(
        lambda shard: FakeChannel(shard.address, failing, seen), lambda channel: None
    )
    yield client, seen
    client.close()


@pytest.mark.parametrize("key", ["user/42", " spaced ", "çava", "100%"])
def test_the_client_sends_the_wire_form(client: Any, key: str) -> None:
    shard_client, seen = client
    echo = shard_client.stub(EchoStub).Echo
    echo(b"x", session_key=key)
    echo(b"x", session_key=key, priority="critical")  # the path with more metadata
    wire = encode_session_key(key)
    assert [md[metadata.SESSION_KEY] for _, md in seen] == [wire, wire]


@pytest.mark.parametrize("key", ["", "x" * 513, "é" * 300, None, ["list"], "\udc80"])
def test_the_client_refuses_invalid_keys_before_sending(client: Any, key: Any) -> None:
    shard_client, seen = client
    echo = shard_client.stub(EchoStub).Echo
    with pytest.raises(InvalidSessionKey):
        echo(b"x", session_key=key)
    with pytest.raises(InvalidSessionKey):
        shard_client.end_session(key)
    assert seen == []
