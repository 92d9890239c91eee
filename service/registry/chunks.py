"""Reading one archive's chunks off the Object Store's stream into a file, hashing them as they arrive.

`ObjectStore.get` is ~16x slower above 2 MB, writes into its file before it checks the digest, and reads with
a push consumer (which a reader in another account cannot be given safely: `pull.py`); here an archive of a few
chunks is read a get at a time, a larger one with a pull consumer of our own, and its bytes are written and
hashed in a worker thread while the next chunks arrive. The digest returned is of the bytes written; the caller
checks it against the signed one. Nothing more is read than the object's metadata announces.

A read-only loader needs `CONSUMER.DELETE.OBJ_<archives>.*` under its API prefix to remove its fetch consumer at
once; without it the server removes the consumer once it has been idle for 10 s (or twice `timeout_s`).
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Final

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.api import RawStreamMsg

from .calls import POLL_S, Calls
from .errors import ArchiveTooLarge, RegistryUnavailable
from .pull import NO_RESPONDERS, PullConsumer, pause_unanswered, pull_consumer, status

_WINDOW_BYTES: Final = 8 * 1024 * 1024  # chunks asked for at once while fetching
_FEW_CHUNKS: Final = 4  # up to this many chunks an archive is read a get at a time, with no consumer


@dataclass(frozen=True, slots=True)
class Chunks:
    """One object's chunks as its metadata announces them."""

    name: str  # the object's
    nuid: str  # names the subject its chunks are on
    size: int
    count: int
    chunk_size: int | None  # the largest, when the metadata says
    first: RawStreamMsg | None = None  # the first chunk, when it was read with the metadata


async def read_chunks(calls: Calls, chunks: Chunks, sink: IO[bytes], limit: float) -> str:
    """Writes the object's chunks into `sink` within `limit` seconds; "sha256:<hex>" of what was written.

    Chunks are received on the event loop and written and hashed in one worker thread meanwhile (hashlib and file
    writes release the interpreter lock, so the two overlap on two cores). An archive of a few chunks is written
    and hashed as it comes: starting a thread and waiting for it would cost more."""
    if chunks.count <= _FEW_CHUNKS:
        hasher = hashlib.sha256()

        def put(data: bytes) -> None:
            sink.write(data)
            hasher.update(data)

        await _receive(calls, chunks, put, limit)
        return "sha256:" + hasher.hexdigest()
    writer = _Writer(sink)
    try:
        await _receive(calls, chunks, writer.put, limit)
    except BaseException:
        writer.abandon()  # the caller removes the file; the thread ends after what it holds
        raise
    return await asyncio.get_running_loop().run_in_executor(None, writer.close)


async def _receive(calls: Calls, chunks: Chunks, put: Callable[[bytes], None], limit: float) -> None:
    name, size, count = chunks.name, chunks.size, chunks.count
    received = total = 0
    if 0 < count <= _FEW_CHUNKS:
        # Most extensions are one chunk: a get per chunk (one round trip each) costs less than making,
        # pulling from and deleting a consumer (three, each through the cluster's leaders).
        async with calls.bounded(f"read archive {name!r}", limit):
            sequence = 0
            for _ in range(count):
                if received == 0 and chunks.first is not None:
                    chunk = chunks.first
                else:
                    chunk = await _chunk_after(calls, chunks, sequence, received)
                data = chunk.data or b""
                total += len(data)
                if total > size:
                    raise ArchiveTooLarge(name, total, size, announced=True)
                put(data)
                received += 1
                sequence = (chunk.seq or 0) + 1
    elif count:
        doing = f"read archive {name!r}"
        per_chunk = chunks.chunk_size or -(-size // count)
        window = max(1, _WINDOW_BYTES // max(per_chunk, 1))
        reconnects = calls.reconnects()
        unanswered = 0
        config = api.ConsumerConfig(
            filter_subject=calls.names.chunk_subject(chunks.nuid),
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=max(10.0, 2 * calls.timeout_s),
        )
        stream = calls.names.archive_stream
        async with calls.bounded(doing, limit), pull_consumer(calls, stream, config, prefix="fetch") as consumer:
            while received < count:
                batch = min(window, count - received)
                await consumer.pull(batch, no_wait=True)  # what is not there is answered by a 404 at once
                for _ in range(batch):
                    msg = await _next(calls, consumer, doing, reconnects)
                    code, _ = status(msg)
                    if code == NO_RESPONDERS:
                        # In a cluster the consumer may live on another server that has not yet told this
                        # one of it (or is gone): no one took the request. Ask again, a little later each
                        # time, for up to timeout_s.
                        unanswered += 1
                        await pause_unanswered(calls, doing, unanswered)
                        break
                    if code is not None:  # 404: no more chunks
                        raise RegistryUnavailable(
                            f"archive {name!r} is not whole: {received} of its {count} chunks are in the bucket "
                            f"(status {code}); publish it again"
                        )
                    total += len(msg.data)
                    if total > size:  # and size is at most max_bytes
                        raise ArchiveTooLarge(name, total, size, announced=True)
                    put(msg.data)
                    received += 1
    if total != size:
        raise RegistryUnavailable(
            f"archive {name!r} is not whole: {total} of its {size} bytes are in the bucket; publish it again"
        )


async def _chunk_after(calls: Calls, chunks: Chunks, sequence: int, received: int) -> RawStreamMsg:
    """The first chunk of the object at or after `sequence` in its stream."""
    subject = calls.names.chunk_subject(chunks.nuid)
    stream = calls.names.archive_stream
    try:
        return await calls.asked(lambda js: js.get_msg(stream, seq=sequence, subject=subject, next=True))
    except nats.js.errors.NotFoundError:
        raise RegistryUnavailable(
            f"archive {chunks.name!r} is not whole: {received} of its {chunks.count} chunks are in the bucket; "
            "publish it again"
        ) from None


async def _next(calls: Calls, consumer: PullConsumer, doing: str, reconnects: int) -> Msg:
    """The consumer's next message; RegistryUnavailable when the connection goes or nothing comes for
    `timeout_s`."""
    waited = 0.0
    while True:
        msg = await consumer.next_msg()
        if msg is not None:
            return msg
        calls.check_same_connection(doing, reconnects)
        waited += POLL_S
        if waited >= calls.timeout_s:
            raise RegistryUnavailable(f"{doing}: nothing arrived for {calls.timeout_s} s")


class _Writer:
    """Writes and hashes chunks in a thread of its own, in the order they are put; `close` (in a thread: it
    waits for the last write) returns the digest, or raises what a write raised."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._hasher = hashlib.sha256()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def abandon(self) -> None:
        self._error = self._error or RuntimeError("abandoned")
        self._queue.put(None)

    def close(self) -> str:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return "sha256:" + self._hasher.hexdigest()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._sink.write(data)
                    self._hasher.update(data)
                except BaseException as exc:
                    self._error = exc
