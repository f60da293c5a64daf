"""Session state in chunks (``ExportSession`` / ``ImportSession``): pure, no I/O.

A transfer is a run of :class:`~shardroute._proto.shard_pb2.SessionChunk` sharing
``session_key`` and ``epoch``, in ``offset`` order, each with ``total_bytes``; the last
has ``last = true`` and the CRC-32 (zlib) of the whole state. An empty state is one
empty last chunk.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from shardroute._proto import shard_pb2
from shardroute.errors import ChunkError, MigrationFailed

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "ChunkAssembler",
    "ChunkError",
    "chunk_size",
    "joined_export",
    "max_chunks",
    "split_chunks",
]

DEFAULT_CHUNK_BYTES = 1024 * 1024
MIN_CHUNK_BYTES = 1024
"""The smallest chunk size a sender uses (the mover refuses a smaller ``chunk_bytes``, an
export asked for less sends this): a transfer of n bytes then has at most
``n // MIN_CHUNK_BYTES + 1`` chunks; a receiver accepts :func:`max_chunks` (that, plus
some slack)."""
_CHUNK_SLACK = 16
_ENVELOPE_BYTES = 64 * 1024  # room for a chunk's other fields under the message limit


def chunk_size(requested: int, max_message_bytes: int) -> int:
    """The chunk size to use: ``requested`` (0: 1 MiB), kept under the message limit.
    Senders ask for at least :data:`MIN_CHUNK_BYTES` (receivers refuse a transfer in
    more chunks than :func:`max_chunks`)."""
    size = requested or DEFAULT_CHUNK_BYTES
    return max(1, min(size, max_message_bytes - _ENVELOPE_BYTES))


def max_chunks(total_bytes: int) -> int:
    """The most chunks a transfer of ``total_bytes`` may come in (a stranger's stream of
    millions of one-byte chunks is refused early)."""
    return total_bytes // MIN_CHUNK_BYTES + _CHUNK_SLACK


def split_chunks(
    session_key: str,
    epoch: int,
    data: bytes,
    size: int,
    state_version: int = 0,
    *,
    warm: bool = False,
) -> Iterator[object]:
    """The chunks of one transfer of ``data`` (at least one, the last with the CRC-32, the
    store version the bytes were saved at, when known, and ``warm``: whether the importer
    should warm the session in the same call)."""
    total = len(data)
    view = memoryview(data)
    offset = 0
    while True:
        end = min(total, offset + size)
        last = end >= total
        yield shard_pb2.SessionChunk(
            session_key=session_key,
            epoch=epoch,
            offset=offset,
            # one chunk for the whole state: no copy of it here (the message makes its own)
            data=data if offset == 0 and last else bytes(view[offset:end]),
            total_bytes=total,
            last=last,
            crc32=zlib.crc32(data) if last else 0,
            state_version=state_version if last else 0,
            warm=warm and last,
        )
        if last:
            return
        offset = end


class ChunkAssembler:
    """Checks and joins the chunks of one incoming transfer.

    Feed every chunk to :meth:`add`; after the last one, :attr:`data` is the verified
    state. Any inconsistency (key or epoch changing, an offset gap, a size over
    ``total_bytes``, a CRC-32 mismatch, chunks after the last, an empty chunk before the
    last, more chunks than :func:`max_chunks` allows) raises :class:`ChunkError`.
    ``check_crc=False`` leaves the CRC-32 to whoever the chunks are forwarded to (a
    mover's relay); ``keep_chunks`` keeps them in :attr:`chunks` for that.
    """

    def __init__(
        self, max_bytes: int, *, keep_chunks: bool = False, check_crc: bool = True
    ) -> None:
        self._max_bytes = max_bytes
        self._check_crc = check_crc
        self._parts: list[bytes] = []
        self._received = 0
        self._crc = 0
        self.session_key = ""
        self.epoch = 0
        self.total_bytes = -1
        self.state_version = 0
        """The store version the sender says the bytes were saved at (0: unknown)."""
        self.warm = False
        """Whether the sender asks the importer to warm the session too."""
        self.done = False
        self.chunks: list[Any] = []
        """The chunks as received, when ``keep_chunks`` (a mover forwards them as they are)."""
        self._keep_chunks = keep_chunks

    def add(self, chunk: shard_pb2.SessionChunk) -> None:
        """Check one chunk and keep its data."""
        if self.done:
            raise ChunkError("chunk after the last one")
        if self.total_bytes < 0:
            if not chunk.session_key:
                raise ChunkError("the first chunk has no session_key")
            if chunk.total_bytes > self._max_bytes:
                raise ChunkError(
                    f"state of {chunk.total_bytes} bytes is over this shard's limit of "
                    f"{self._max_bytes} bytes"
                )
            self.session_key, self.epoch = chunk.session_key, chunk.epoch
            self.total_bytes = chunk.total_bytes
        elif (chunk.session_key, chunk.epoch, chunk.total_bytes) != (
            self.session_key,
            self.epoch,
            self.total_bytes,
        ):
            raise ChunkError("session_key, epoch or total_bytes changed within one transfer")
        if chunk.offset != self._received:
            raise ChunkError(f"chunk at offset {chunk.offset}, expected {self._received}")
        data = chunk.data  # each read of a bytes field is a copy: read it once
        if not data and not chunk.last:
            raise ChunkError(f"empty chunk at offset {chunk.offset} (only the last may be empty)")
        if len(self._parts) >= max_chunks(self.total_bytes):
            raise ChunkError(
                f"more than {max_chunks(self.total_bytes)} chunks for a state of "
                f"{self.total_bytes} bytes (senders use chunks of {MIN_CHUNK_BYTES} bytes or more)"
            )
        self._received += len(data)
        if self._received > self.total_bytes:
            raise ChunkError(f"more than total_bytes={self.total_bytes} bytes received")
        if self._check_crc:
            self._crc = zlib.crc32(data, self._crc)
        self._parts.append(data)
        if self._keep_chunks:
            self.chunks.append(chunk)
        if chunk.last:
            if self._received != self.total_bytes:
                raise ChunkError(
                    f"{self._received} bytes received, total_bytes says {self.total_bytes}"
                )
            if self._check_crc and self._crc != chunk.crc32:
                raise ChunkError(
                    f"CRC-32 mismatch: computed {self._crc:08x}, the last chunk says "
                    f"{chunk.crc32:08x}",
                    corrupt=True,
                )
            self.state_version = chunk.state_version
            self.warm = chunk.warm
            self.done = True

    @property
    def data(self) -> bytes:
        """The whole state (only meaningful once :attr:`done`)."""
        return b"".join(self._parts)


def joined_export(
    session_key: str, chunks: Iterable[Any], max_bytes: int, *, epoch: int | None = None
) -> ChunkAssembler:
    """The transfer an export streamed, checked by :class:`ChunkAssembler` (at most
    ``max_bytes``: what the store accepts; for ``session_key`` and, when given, ``epoch``),
    its chunks kept so a mover can forward them as they are. A malformed, oversized or
    foreign transfer is a :class:`~shardroute.errors.MigrationFailed`. The CRC-32 is left
    to the importer, which checks it over the same bytes (a mismatch: ``DATA_LOSS``)."""
    assembler = ChunkAssembler(max_bytes=max_bytes, keep_chunks=True, check_crc=False)
    try:
        for chunk in chunks:
            assembler.add(chunk)
        foreign = assembler.session_key != session_key or epoch not in (None, assembler.epoch)
        if assembler.done and foreign:
            raise ChunkError(
                f"the chunks are for session {assembler.session_key!r} at epoch "
                f"{assembler.epoch}, not this export's"
            )
    except ChunkError as exc:
        raise MigrationFailed(
            f"session {session_key!r}: exported state is malformed: {exc}", session_key
        ) from exc
    if not assembler.done:
        raise MigrationFailed(
            f"session {session_key!r}: export ended without a last chunk", session_key
        )
    return assembler
