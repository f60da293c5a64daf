"""The demo's chat traffic: conversations with one turn in flight each, ended after a
few turns, retried as an application would, and the tally of what happened."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shardroute.client import ShardClient
from shardroute.demo._config import DemoConfig
from shardroute.errors import ShardRouteError
from shardroute.examples.chat import chat_pb2, chat_pb2_grpc

__all__ = ["Tally", "worker"]


@dataclass
class Tally:
    """What the workers observed; guarded by ``lock``.

    Every reply says how many turns its shard holds for the session (``turns_held``,
    this turn included). The demo knows how many of the session's turns were answered,
    so it can tell a turn lost (the shard holds fewer) from a conversation that moved
    with its history (another shard, the right count). A conversation idle for
    ``idle_expiry_s`` (the shards' ``session_ttl_s``) or more that starts again at turn 1
    expired, as documented: counted in ``expired``, not as lost turns.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    turns: int = 0
    errors: int = 0
    retried: int = 0
    affinity_checks: int = 0
    affinity_hits: int = 0
    lost_turns: int = 0
    served: Counter[str] = field(default_factory=Counter)
    last_shard: dict[str, str] = field(default_factory=dict)
    answered: Counter[str] = field(default_factory=Counter)
    unsure: set[str] = field(default_factory=set)
    """Sessions whose last turn failed mid-reply: it may or may not have been applied."""
    moved: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    """Sessions with a turn in flight: a conversation has one turn at a time."""
    generation: Counter[int] = field(default_factory=Counter)
    """Per conversation slot: how many conversations it has ended (its key's suffix)."""
    length: dict[int, int] = field(default_factory=dict)
    """Per conversation slot: how many turns its current conversation lasts."""
    ended: int = 0
    idle_expiry_s: float | None = None
    expired: int = 0
    last_at: dict[str, float] = field(default_factory=dict)
    """Per session: when its last turn was answered (``time.monotonic()``)."""

    def key(self, slot: int) -> str:
        """The session key of the slot's current conversation."""
        return f"conversation-{slot:04d}-{self.generation[slot]}"

    def forget(self, slot: int, session: str) -> None:
        """The slot's conversation ended: the next one gets a new key."""
        self.generation[slot] += 1
        self.length.pop(slot, None)
        self.ended += 1
        for table in (self.answered, self.last_shard, self.last_at):
            table.pop(session, None)
        self.unsure.discard(session)

    def record(self, session: str, shard: str, held: int) -> None:
        """A turn of ``session`` answered by ``shard``, which holds ``held`` turns."""
        expected = self.answered[session] + 1
        if session in self.unsure and held == expected + 1:
            expected += 1  # the failed attempt had been applied before the reply broke
        self.unsure.discard(session)
        now, ttl = time.monotonic(), self.idle_expiry_s
        if held == 1 < expected and ttl is not None and now - self.last_at.get(session, now) >= ttl:
            self.expired += 1  # idle past the store's TTL: it started again, as documented
            expected = 1
        self.last_at[session] = now
        if held < expected:
            self.lost_turns += expected - held
        self.answered[session] = held
        self.turns += 1
        self.served[shard] += 1
        previous = self.last_shard.get(session)
        if previous is not None:
            self.affinity_checks += 1
            if previous == shard:
                self.affinity_hits += 1
            elif held >= expected:
                self.moved.add(session)  # continued elsewhere with its whole history
        self.last_shard[session] = shard


def _turn(chat: Any, session: str, max_tokens: int) -> tuple[str, int] | None:
    """One chat turn; returns (shard, turns_held), or None for an empty reply."""
    request = chat_pb2.GenerateRequest(prompt="tell me more", max_tokens=max_tokens)
    last: Any = None
    for token in chat.Generate(request, session_key=session, timeout=10):
        last = token
    if last is None:
        return None
    return last.shard_id, last.turns_held


def worker(
    client: ShardClient, config: DemoConfig, tally: Tally, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    chat = client.stub(chat_pb2_grpc.ChatStub)
    slots = list(range(config.sessions))
    weights = [1.0 / (i + 1) for i in range(config.sessions)]  # Zipf-like popularity
    shortest, longest = config.turns_per_conversation
    while not stop.is_set():
        slot = rng.choices(slots, weights)[0]
        with tally.lock:
            session = tally.key(slot)
            if session in tally.busy:
                continue  # someone is mid-turn in this conversation: pick another
            tally.busy.add(session)
            length = tally.length.setdefault(slot, rng.randint(shortest, longest))
        try:
            _conversation_turn(chat, session, config, tally, stop)
            with tally.lock:
                over = tally.answered[session] >= length
            if over and not stop.is_set():
                _end_conversation(client, slot, session, tally, stop)
        except Exception:  # a bug must show in the summary, not end the thread quietly
            logging.getLogger("shardroute.demo").exception(
                "demo: a turn of %s failed: counted in the summary's errors (lost_turns "
                "says whether an answered turn was lost); the traceback says why",
                session,
            )
            with tally.lock:
                tally.errors += 1
        finally:
            with tally.lock:
                tally.busy.discard(session)


def _end_conversation(
    client: ShardClient, slot: int, session: str, tally: Tally, stop: threading.Event
) -> None:
    """End a conversation that had its turns (retried like an application would)."""
    for attempt in range(3):
        try:
            client.end_session(session, timeout=10)
            break
        except ShardRouteError:
            if stop.is_set():
                return
            stop.wait(0.05 * (attempt + 1))
    else:
        with tally.lock:
            tally.errors += 1
        return
    with tally.lock:
        tally.forget(slot, session)


def _conversation_turn(
    chat: Any, session: str, config: DemoConfig, tally: Tally, stop: threading.Event
) -> None:
    """One turn of ``session``, retried like an application would (3 tries)."""
    result = None
    for attempt in range(3):
        try:
            result = _turn(chat, session, config.max_tokens)
            break
        except ShardRouteError:
            if stop.is_set():
                return  # shutting down (Ctrl-C): the client or shards are going away
            with tally.lock:
                tally.unsure.add(session)
                tally.retried += 1
            stop.wait(0.05 * (attempt + 1))  # back off before the application retries
    with tally.lock:
        if result is None:
            tally.errors += 1
        else:
            tally.record(session, *result)
