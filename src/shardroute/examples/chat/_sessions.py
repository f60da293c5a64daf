"""The chat example's state and reply logic, shared by the sync and asyncio shards."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from shardroute.server import SessionSummary

__all__ = ["ChatSessions", "TurnRecord", "compose_reply"]


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One completed turn of a conversation."""

    prompt: str
    reply: str


class ChatSessions:
    """Conversation history per session, in memory. Thread-safe (one lock, no I/O)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[str, list[TurnRecord]] = {}
        self._last_used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._turns)

    def turns(self, session_key: str) -> tuple[TurnRecord, ...]:
        """The session's completed turns, oldest first (empty for an unknown session)."""
        with self._lock:
            return tuple(self._turns.get(session_key, ()))

    def add_turn(self, session_key: str, prompt: str, reply: str) -> int:
        """Record a completed turn; returns how many turns the session now has."""
        with self._lock:
            turns = self._turns.setdefault(session_key, [])
            turns.append(TurnRecord(prompt, reply))
            self._last_used[session_key] = time.time()
            return len(turns)

    def summaries(self) -> list[SessionSummary]:
        """Every session held, with its approximate state size and last use."""
        with self._lock:
            return [
                SessionSummary(
                    session_key=key,
                    state_bytes=sum(len(t.prompt) + len(t.reply) for t in turns),
                    last_used_ts=self._last_used.get(key, 0.0),
                )
                for key, turns in self._turns.items()
            ]


def compose_reply(shard_id: str, turn: int, prompt: str, max_tokens: int) -> list[str]:
    """The reply's tokens: deterministic, and they say the turn number and the turns held.

    ``turn`` is the number of this turn (1 for the first); the shard holds ``turn`` turns
    for the session once it completes.
    """
    words = prompt.split() or ["(silence)"]
    tokens = [f"[{shard_id}]", f"turn {turn},", f"{turn} turns held:", "you said", *words]
    return [token + " " for token in tokens[: max(1, max_tokens)]]
