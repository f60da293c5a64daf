"""Pure parts of the sessions package: the state envelope and next_override."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from shardroute.errors import ConfigError, MalformedRecord, StaleState, StateTooLarge
from shardroute.model import Override
from shardroute.sessions import (
    InMemorySessionStore,
    SessionStore,
    StoredState,
    decode_envelope,
    encode_envelope,
    next_override,
)

KEY = "/shardroute/chat/state/s1"


def envelope(header: object, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return b"SRS1" + struct.pack(">I", len(raw)) + raw + data


@pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 3, b"\0" * 1000])
def test_envelope_round_trip(data: bytes) -> None:
    raw = encode_envelope(data, owner="s1", ts=1700000000.5)
    assert raw.startswith(b"SRS1")
    assert decode_envelope(KEY, raw, 7) == StoredState(data, 7, "s1")


def test_envelope_layout_matches_the_docs() -> None:
    raw = encode_envelope(b"abc", owner="s2", ts=12.0)
    (header_len,) = struct.unpack(">I", raw[4:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header == {"owner": "s2", "size": 3, "crc32": zlib.crc32(b"abc"), "ts": 12.0}
    assert raw[8 + header_len :] == b"abc"


def test_envelope_written_by_hand_decodes() -> None:
    raw = envelope({"owner": "x", "size": 2, "crc32": zlib.crc32(b"hi"), "ts": 0}, b"hi")
    assert decode_envelope(KEY, raw, 1).data == b"hi"


GOOD = {"owner": "s1", "size": 2, "crc32": zlib.crc32(b"hi"), "ts": 1}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "magic"),
        (b"hi", "magic"),
        (b"SRS2" + envelope(GOOD, b"hi")[4:], "magic"),
        (b"SRS1\0\0", "truncated"),
        (b"SRS1" + struct.pack(">I", 999) + b"{}", "header length"),
        (b"SRS1" + struct.pack(">I", 2**31) + b"{}", "header length"),
        (b"SRS1" + struct.pack(">I", 3) + b"{x}", "not JSON"),
        (b"SRS1" + struct.pack(">I", 2) + b"[]", "not a JSON object"),
        (envelope({**GOOD, "owner": 5}, b"hi"), "owner"),
        (envelope({**GOOD, "size": "2"}, b"hi"), "size"),
        (envelope({**GOOD, "size": True}, b"hi"), "size"),
        (envelope({**GOOD, "crc32": None}, b"hi"), "crc32"),
        (envelope(GOOD, b"h"), "header says 2"),
        (envelope(GOOD, b"hii"), "header says 2"),
        (envelope(GOOD, b"ho"), "CRC-32"),
    ],
)
def test_corrupt_envelope_is_malformed_and_names_the_key(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason) as info:
        decode_envelope(KEY, raw, 3)
    assert info.value.key == KEY


def test_next_override_starts_at_epoch_one_and_increments() -> None:
    first = next_override(None, "s1")
    assert first == Override("s1", 1, "", 0)
    moving = next_override(Override("s1", 4, "", 99), "s1", moving_to="s2")
    assert moving == Override("s1", 5, "s2", 0)
    committed = next_override(moving, "s2")
    assert (committed.owner, committed.epoch, committed.moving_to) == ("s2", 6, "")


def test_next_override_needs_an_owner() -> None:
    with pytest.raises(ConfigError):
        next_override(None, "")


# -- argument checks: before any I/O, same for every store ---------------------------------


def test_in_memory_store_is_a_session_store() -> None:
    assert isinstance(InMemorySessionStore(), SessionStore)
    assert InMemorySessionStore().max_bytes == 1024 * 1024


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_bytes_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError):
        InMemorySessionStore(max_bytes=bad)  # type: ignore[arg-type]


def test_bad_arguments_raise_config_error() -> None:
    store = InMemorySessionStore()
    with pytest.raises(ConfigError):
        store.save("", b"", owner="s1", expected_version=0)  # any non-empty key is valid
    with pytest.raises(ConfigError):
        store.save("k", b"", owner="", expected_version=0)
    with pytest.raises(ConfigError):
        store.save("k", b"", owner="s1", expected_version=-1)
    with pytest.raises(ConfigError):
        store.save("k", 5, owner="s1", expected_version=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        store.delete("k", expected_version=-2)
    assert store.load("k") is None


def test_in_memory_versions_are_one_global_counter() -> None:
    store = InMemorySessionStore(max_bytes=4)
    v1 = store.save("a", b"1", owner="s1", expected_version=0)
    v2 = store.save("b", b"2", owner="s1", expected_version=0)
    v3 = store.save("a", bytearray(b"3"), owner="s2", expected_version=v1)  # type: ignore[arg-type]
    assert 0 < v1 < v2 < v3
    assert store.load("a") == StoredState(b"3", v3, "s2")
    with pytest.raises(StaleState):
        store.save("a", b"4", owner="s1", expected_version=v1)
    with pytest.raises(StateTooLarge) as info:
        store.save("a", b"12345", owner="s1", expected_version=v3)
    assert (info.value.session_key, info.value.size, info.value.limit) == ("a", 5, 4)
