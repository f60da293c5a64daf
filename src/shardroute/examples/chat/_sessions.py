"""The chat example's state and reply logic, shared by the sync and asyncio shards.

A session's state is its list of answered turns, ``[[prompt, reply], ...]``, kept by the
shard's :class:`~shardroute.server.SessionHost` and saved as JSON (:data:`CHAT_CODEC`)
to the session store before the last token of each reply is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shardroute.server import JsonCodec

__all__ = ["CHAT_CODEC", "TurnRecord", "compose_reply", "turn_records", "with_turn"]

CHAT_CODEC = JsonCodec(empty=list)
"""State ↔ bytes: the turns as compact JSON (``[["hi", "[s1] turn 1, ..."], ...]``)."""


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One completed turn of a conversation."""

    prompt: str
    reply: str


def turn_records(state: Sequence[Any]) -> tuple[TurnRecord, ...]:
    """The turns of a session's state, oldest first."""
    return tuple(TurnRecord(str(prompt), str(reply)) for prompt, reply in state)


def with_turn(state: Sequence[Any], prompt: str, reply: str) -> list[Any]:
    """A new state: ``state`` plus one answered turn (``state`` is left as it was)."""
    return [*state, [prompt, reply]]


def compose_reply(shard_id: str, turn: int, prompt: str, max_tokens: int) -> list[str]:
    """The reply's tokens: deterministic, and they say the turn number and the turns held.

    ``turn`` is the number of this turn (1 for the first); the shard holds ``turn`` turns
    for the session once it completes.
    """
    words = prompt.split() or ["(silence)"]
    tokens = [f"[{shard_id}]", f"turn {turn},", f"{turn} turns held:", "you said", *words]
    return [token + " " for token in tokens[: max(1, max_tokens)]]
