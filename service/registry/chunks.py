"""Reading one archive's chunks off the Object Store's stream into a file, hashing them as they arrive.

`ObjectStore.get` is ~16x slower above 2 MB and writes into its file before it checks the digest; here an
archive of a few chunks is read a get at a time, a larger one with a pull consumer of our own, and its bytes are
written and hashed in a worker thread while the next chunks arrive. The digest returned is of the bytes written;
the caller checks it against the signed one. Nothing more is read than the object's metadata announces.

A read-only loader needs, beyond what REGISTRY-NOTES lists, `$JS.API.CONSUMER.DELETE.OBJ_<archives>.*` to
remove its fetch consumer at once; without it the server removes the consumer once it has been idle for 10 s
(or twice `timeout_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import queue
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.api import RawStreamMsg

from .calls import POLL_S, Calls
from .errors import ArchiveTooLarge, RegistryUnavailable

_CLEANUP_S: Final = 1.0  # a consumer delete that takes longer is left to the consumer's inactivity limit
_WINDOW_BYTES: Final = 8 * 1024 * 1024  # chunks asked for at once while fetching
_FEW_CHUNKS: Final = 4  # up to this many chunks an archive is read a get at a time, with no consumer
_NO_RESPONDERS: Final = "503"  # the status of a request no subscriber took


@dataclass(frozen=True, slots=True)
class Chunks:
    """One object's chunks as its metadata announces them."""

    name: str  # the object's
    nuid: str  # names the subject its chunks are on
    size: int
    count: int
    chunk_size: int | None  # the largest, when the metadata says


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
        async with calls.bounded(doing, limit), _consumer(calls, chunks.nuid) as (sub, pull):
            while received < count:
                batch = min(window, count - received)
                await pull(batch)
                for _ in range(batch):
                    msg = await _next(calls, sub, doing, reconnects)
                    headers = msg.headers
                    status = headers.get("Status") if headers else None
                    if status == _NO_RESPONDERS:
                        # In a cluster the consumer may live on another server that has not yet told this
                        # one of it (or is gone): no one took the request. Ask again, a little later each
                        # time, for up to timeout_s.
                        unanswered += 1
                        await _pause_unanswered(calls, doing, unanswered)
                        break
                    if status is not None:  # 404: no more chunks
                        raise RegistryUnavailable(
                            f"archive {name!r} is not whole: {received} of its {count} chunks are in the bucket "
                            f"(status {status}); publish it again"
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


async def _pause_unanswered(calls: Calls, doing: str, times: int) -> None:
    """The pause before asking again a consumer that no one answered for (status 503): 1 ms, doubling up to
    `POLL_S`; RegistryUnavailable once such pauses add up to `timeout_s`."""
    waited = sum(min(POLL_S, 0.001 * 2**n) for n in range(times - 1))
    if waited >= calls.timeout_s:
        raise RegistryUnavailable(
            f"{doing}: no server answered for its consumer within {calls.timeout_s} s (status 503): "
            "the server holding it may have stopped; try again"
        )
    await asyncio.sleep(min(POLL_S, 0.001 * 2 ** (times - 1)))


@contextlib.asynccontextmanager
async def _consumer(calls: Calls, nuid: str) -> AsyncIterator[tuple[Subscription, Callable[[int], Awaitable[None]]]]:
    """An ephemeral pull consumer of the chunks on `$O.<bucket>.C.<nuid>`: the subscription its messages
    come on, and `pull(n)` that asks for the next n (without waiting: what is not there is answered by a
    404 status at once). The subscription and the consumer go at the end."""
    nc = calls.nc
    stream = calls.names.archive_stream
    consumer = f"fetch-{secrets.token_hex(8)}"
    inbox = nc.new_inbox()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    async def pull(batch: int) -> None:
        await nc.publish(next_subject, json.dumps({"batch": batch, "no_wait": True}).encode(), reply=inbox)

    sub = await nc.subscribe(inbox)
    try:
        await calls.js.add_consumer(
            stream,
            api.ConsumerConfig(
                name=consumer,
                filter_subject=calls.names.chunk_subject(nuid),
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.NONE,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=max(10.0, 2 * calls.timeout_s),
            ),
        )
        try:
            yield sub, pull
        finally:
            await _forget_consumer(calls, stream, consumer)
    finally:
        if not nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


async def _next(calls: Calls, sub: Subscription, doing: str, reconnects: int) -> Msg:
    """The subscription's next message; RegistryUnavailable when the connection goes or nothing comes for
    `timeout_s`."""
    waited = 0.0
    while True:
        try:
            msg: Msg = await sub.next_msg(timeout=POLL_S)
            return msg
        except nats.errors.TimeoutError:
            calls.check_same_connection(doing, reconnects)
            waited += POLL_S
            if waited >= calls.timeout_s:
                raise RegistryUnavailable(f"{doing}: nothing arrived for {calls.timeout_s} s") from None


async def _forget_consumer(calls: Calls, stream: str, consumer: str) -> None:
    if not calls.nc.is_connected:
        return  # its inactivity limit removes it
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await calls.nc.request(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", b"", timeout=_CLEANUP_S)


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
