"""Session keys: what a key may be, and the one encoding that carries any key in gRPC
metadata and in etcd keys (docs/protocol.md, docs/etcd-schema.md).

A session key is any UTF-8 string of 1 to :data:`MAX_SESSION_KEY_BYTES` bytes. It travels
in the ``x-shardroute-session`` request header (printable ASCII only) and names etcd keys
(``sessions/<key>``, ``state/<key>``, where ``/`` separates folders), so both use its
*wire form*: the key with ``%``, ``/``, every character outside printable ASCII (as its
UTF-8 bytes) and a leading or trailing space percent-encoded (``%2F``, ``%C3%A9``, ``%20``).
Every other character stands for itself, so the keys that worked before (printable ASCII
without ``/``) are their own wire form: same header, same etcd keys. Only a key holding
``%`` changes form (``%`` is the escape character): ``a%b`` is sent as ``a%25b``.

The client checks and encodes a key before anything is sent; the wire forms of the keys
seen lately are kept (:func:`wire_form`), so a session's next call costs one dict lookup.
The shard decodes the header strictly and answers a malformed one with
``INVALID_ARGUMENT``; it also takes ``/`` and inner spaces unencoded.
"""

from __future__ import annotations

import re

from shardroute.errors import InvalidSessionKey

__all__ = [
    "MAX_SESSION_KEY_BYTES",
    "check_session_key",
    "decode_session_key",
    "encode_session_key",
    "is_plain",
    "known_wire_form",
    "wire_form",
]

MAX_SESSION_KEY_BYTES = 512
"""The longest session key, in UTF-8 bytes."""

# Printable ASCII but '%' and '/', not starting or ending with a space, at most 512 bytes.
# Such a key is its own wire form.
_EDGE = r"!-$&-.0-~"
_PLAIN = re.compile(rf"[{_EDGE}](?:[ {_EDGE}]{{0,{MAX_SESSION_KEY_BYTES - 2}}}[{_EDGE}])?")
is_plain = _PLAIN.fullmatch
"""``is_plain(key)``: a match (truthy) when ``key`` is a valid key that is its own wire
form; the clients' hot path tests this alone."""

_KEEP = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"%", "/"}
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def check_session_key(key: object) -> str:
    """``key`` if it is a valid session key, else :class:`InvalidSessionKey` saying why."""
    if not isinstance(key, str):
        raise InvalidSessionKey(f"a session key must be a string, got {type(key).__name__}")
    if is_plain(key):
        return key
    if not key:
        raise InvalidSessionKey("a session key must not be empty")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidSessionKey(
            f"session key {key!r} is not valid UTF-8 text (it holds a lone surrogate)"
        ) from None
    if size > MAX_SESSION_KEY_BYTES:
        raise InvalidSessionKey(
            f"session key of {size} UTF-8 bytes starting {key[:40]!r}: the limit is "
            f"{MAX_SESSION_KEY_BYTES} bytes (hash a longer identifier into a key)"
        )
    return key


def encode_session_key(key: str) -> str:
    """The wire form of ``key`` (printable ASCII, no ``/``); ``key`` itself for plain keys.
    Raises :class:`InvalidSessionKey` for an invalid key."""
    if key.__class__ is str and is_plain(key):
        return key
    check_session_key(key)
    last = len(key) - 1
    parts = []
    for i, char in enumerate(key):
        if char in _KEEP and not (char == " " and (i == 0 or i == last)):
            parts.append(char)
        else:
            parts.extend(f"%{byte:02X}" for byte in char.encode())
    return "".join(parts)


_WIRE_FORMS: dict[str, str] = {}
_WIRE_FORMS_MAX = 16384
known_wire_form = _WIRE_FORMS.get
"""``known_wire_form(key)``: the wire form of a valid key :func:`wire_form` met lately,
else None (the clients' hot path: one dict lookup)."""


def wire_form(key: str) -> str:
    """:func:`encode_session_key`, remembered for the next call of the same session (at
    most 16,384 keys: the table is emptied when full, which costs the next call of each
    session one encoding)."""
    wire = _WIRE_FORMS.get(key) if key.__class__ is str else None
    if wire is None:
        wire = encode_session_key(key)
        if len(_WIRE_FORMS) >= _WIRE_FORMS_MAX:
            _WIRE_FORMS.clear()
        _WIRE_FORMS[key] = wire
    return wire


def decode_session_key(wire: str) -> str:
    """The session key whose wire form is ``wire`` (strict: a ``%`` not followed by two
    hex digits, bytes that are not UTF-8, or a key out of bounds raise
    :class:`InvalidSessionKey`)."""
    if "%" not in wire:
        return check_session_key(wire)
    if not wire.isascii() or wire.count("%") != len(_ESCAPE.findall(wire)):
        raise InvalidSessionKey(f"malformed session key encoding {wire[:80]!r}: bad '%' escape")
    try:
        raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), wire).encode("latin-1")
        key = raw.decode()
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise InvalidSessionKey(
            f"malformed session key encoding {wire[:80]!r}: not printable ASCII "
            "escaping UTF-8 bytes"
        ) from None
    return check_session_key(key)
