"""The registry's two buckets on NATS JetStream: the index (Key-Value, one record per extension, written with
compare-and-set) and the archives (Object Store, one object per archive), each call bounded in time.

The publisher calls `create`, loaders `open`. Every call looks at the connection first and gives up after
`timeout_s`, so a loader whose server is gone fails at once instead of waiting out nats-py's own time-outs
(a KV get on a dead connection waits 5 s). The reads that bind the buckets and size the index before a watch
are sent again each second they go unanswered within that bound: while a cluster elects new leaders (a node
stopped), its servers drop requests rather than answer them. nats-py's errors become three of ours, each
saying what to do:

    RegistryError
    +-- RegistryUnavailable   not connected, a bucket missing, no answer in time, permission refused
    +-- Conflict              the index record changed since it was read (compare-and-set lost)
    +-- ArchiveTooLarge       an archive is larger than the caller accepts, or than its metadata says

Archives are read with a pull consumer of our own, straight into a file, hashing as the chunks arrive:
`ObjectStore.get` is ~16x slower above 2 MB and writes into its file before it checks the digest. The
digest returned is of the bytes written; the caller checks it against the signed one.

A read-only loader needs, beyond what REGISTRY-NOTES lists, `$JS.API.CONSUMER.DELETE.OBJ_<archives>.*` to
remove its fetch consumer at once; without it the server removes the consumer once it has been idle for 10 s
(or twice `timeout_s`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import queue
import re
import secrets
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Final, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.api import RawStreamMsg
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from nats.js.object_store import ObjectStore

CHUNK_SIZE: Final = 512 * 1024  # below the server's max_payload (1 MB in nats.conf); puts faster than 128 KiB
HISTORY: Final = 16

log = logging.getLogger(__name__)
_POLL_S: Final = 0.25  # how often a wait looks at the connection: nats-py tells only its own callbacks
_ATTEMPT_S: Final = 1.0  # a read that JetStream has not answered in this long is sent again (see `_asked`)
_WATCH_CHECK_S: Final = 1.0  # how often a quiet watch asks whether its consumer is still there
_CLEANUP_S: Final = 1.0  # a consumer delete that takes longer is left to the consumer's inactivity limit
_WINDOW_BYTES: Final = 8 * 1024 * 1024  # chunks asked for at once while fetching
_FEW_CHUNKS: Final = 4  # up to this many chunks an archive is read a get at a time, with no consumer
_SLOWEST_BYTES_PER_S: Final = 1024 * 1024  # an archive moving slower than this counts as a link that is down
_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")  # nats-py lets "a..b" through, then times out
_DIGEST_PREFIX: Final = "SHA-256="
_T = TypeVar("_T")
_NO_RESPONDERS: Final = "503"  # the status of a request no subscriber took
_STREAM_NOT_FOUND: Final = 10059
_STREAM_NAME_IN_USE: Final = 10058


class RegistryError(Exception):
    """Root of the registry's JetStream errors."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be used now: not connected, a bucket missing, no answer in time, permission
    refused, or an object in the bucket that is not whole. The message says which, and what to do."""


class Conflict(RegistryError):
    """The index record changed since it was read: another writer won the compare-and-set."""

    def __init__(self, key: str, revision: int) -> None:
        self.key = key
        self.revision = revision
        read = f"revision {revision}" if revision else "no record"
        super().__init__(f"index key {key!r} was written by someone else since {read} was read: read it again")


class ArchiveTooLarge(RegistryError):
    """An archive is larger than the caller accepts, or holds more bytes than its metadata announces."""

    def __init__(self, name: str, size: int, limit: int, *, announced: bool = False) -> None:
        self.name = name
        self.size = size
        self.limit = limit
        self.announced = announced
        if announced:
            why = f"more than the {limit} its metadata announces: the object is corrupt; publish it again"
        else:
            why = f"more than the {limit} accepted: raise the limit, or do not load this release"
        super().__init__(f"archive {name!r} has {size} bytes or more, {why}")


@dataclass(frozen=True, slots=True)
class BucketNames:
    index: str = "extension-index"
    archives: str = "extension-archives"


DEFAULT_NAMES: Final = BucketNames()


@dataclass(frozen=True, slots=True)
class Update:
    """One key's value at `revision`; `value` is None when the key was deleted or purged."""

    key: str
    value: bytes | None
    revision: int


class CaughtUp:
    """Yielded by `watch` once it has delivered every current value; the one instance is `CAUGHT_UP`."""

    _instance: ClassVar[CaughtUp | None] = None

    def __new__(cls) -> CaughtUp:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CAUGHT_UP"


CAUGHT_UP: Final = CaughtUp()


class _Options(msgspec.Struct, frozen=True):
    max_chunk_size: int | None = None
    link: dict[str, Any] | None = None


class _ObjectMeta(msgspec.Struct, frozen=True):
    """What the Object Store keeps on `$O.<bucket>.M.<base64url(name)>` (nats-py's ObjectInfo as JSON)."""

    nuid: str = ""
    size: int | None = None
    chunks: int | None = None
    digest: str | None = None
    deleted: bool | None = False
    options: _Options | None = None


class RegistryBuckets:
    """The index and archive buckets on one NATS connection, which the caller owns (and reconnects)."""

    def __init__(self, nc: Client, names: BucketNames = DEFAULT_NAMES, *, timeout_s: float = 5.0) -> None:
        self.names = names
        self.timeout_s = timeout_s
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout_s)
        self._attempt = nc.jetstream(timeout=min(_ATTEMPT_S, timeout_s))  # for `_asked`
        self._kv: KeyValue | None = None
        self._obs: ObjectStore | None = None
        self._consumer_idle_s = max(10.0, 2 * timeout_s)

    # --- buckets ------------------------------------------------------------------------------------------

    async def create(self, *, replicas: int = 1) -> None:
        """For the publisher: makes both buckets when missing (index history 16, no ttl on either, file storage,
        `replicas` copies), else binds to them."""
        async with self._call("create the registry buckets"):
            self._kv = await self._index_bucket(replicas)
            self._obs = await self._archive_bucket(replicas)
        for problem in await self.problems():
            log.warning("registry: %s", problem)

    async def problems(self) -> list[str]:
        """What is wrong with buckets that were there already (made by hand, say): a time to live deletes
        published archives and index records, which a published version must outlive."""
        found: list[str] = []
        for stream in (f"KV_{self.names.index}", f"OBJ_{self.names.archives}"):

            async def read(js: JetStreamContext, stream: str = stream) -> api.StreamInfo:
                return await js.stream_info(stream)

            async with self._call(f"read the settings of stream {stream}"):
                info = await self._asked(read)
            if info.config.max_age:
                found.append(
                    f"stream {stream} deletes what is older than {info.config.max_age:g} s (a bucket ttl): "
                    "published versions would vanish; make the bucket again without a ttl"
                )
        return found

    async def open(self, *, archives: bool = True) -> None:
        """For loaders: binds to both buckets (`archives=False`: the index only, for a reader of the index such
        as `search`, whom nats.conf does not let near the archives), creating nothing; RegistryUnavailable names
        any that is missing."""
        missing: list[str] = []
        streams = [f"KV_{self.names.index}", *([f"OBJ_{self.names.archives}"] if archives else [])]
        async with self._call("open the registry buckets"):
            for stream in streams:
                await self._stream_answers(stream)
            try:
                self._kv = await self._js.key_value(self.names.index)
            except nats.js.errors.BucketNotFoundError:
                missing.append(f"the index (Key-Value bucket {self.names.index!r})")
            try:
                if archives:
                    self._obs = await self._js.object_store(self.names.archives)
            except nats.js.errors.BucketNotFoundError:
                missing.append(f"the archives (Object Store bucket {self.names.archives!r})")
        if missing:
            raise RegistryUnavailable(
                f"{' and '.join(missing)} of the registry {'are' if len(missing) > 1 else 'is'} not on this server: "
                "publish an extension first (the publisher creates the buckets), or check the bucket names in the "
                "configuration"
            )

    # --- the index ----------------------------------------------------------------------------------------

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """The key's value and revision; (None, 0) when there is no such key or it was deleted."""
        kv = self._index()
        _check_key(key)
        async with self._call(f"read index key {key!r}"):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # nats-py turns a deleted key into this too
                return None, 0
        return entry.value or b"", int(entry.revision or 0)

    async def put(self, key: str, value: bytes, revision: int) -> int:
        """Writes `value` if the key is still at `revision` (0: the key has no record); the new revision.
        Conflict when someone wrote it first."""
        kv = self._index()
        _check_key(key)
        if revision < 0:
            raise ValueError(f"a revision is 0 (no record) or positive, not {revision}")
        async with self._call(f"write index key {key!r}"):
            try:
                if revision == 0:
                    return int(await kv.create(key, value))
                return int(await kv.update(key, value, last=revision))
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                raise Conflict(key, revision) from exc

    async def entries(self) -> list[Update]:
        """Every key's current value (deleted keys left out); [] for an empty bucket."""
        latest: dict[str, Update] = {}
        async with self._call("list the index"), contextlib.aclosing(self.watch()) as updates:
            async for item in updates:
                if isinstance(item, CaughtUp):
                    break
                latest[item.key] = item
        return [u for u in latest.values() if u.value is not None]

    async def watch(self) -> AsyncGenerator[Update | CaughtUp, None]:
        """Every key's current value (None for a deleted one), then CAUGHT_UP, then each change as it comes.

        Raises RegistryUnavailable as soon as the connection is lost, even if nats-py then reconnects, and when
        the watch's consumer is gone while the connection is not (in a cluster it may live on another server,
        which stopped; asked each `_WATCH_CHECK_S` of quiet): the caller calls `watch` anew (once connected
        again), which delivers the current values again (what changed meanwhile included) and then CAUGHT_UP.
        Left to itself, nats-py's ordered consumer would notice only after its missed heartbeats, 10 to 20 s
        later. Close the iterator when done (`contextlib.aclosing`), which stops the consumer.
        """
        kv = self._index()
        reconnects = self._reconnects()
        async with self._call("watch the index"):
            # nats-py's own "caught up" marker (None) can come before values already on their way: it asks
            # the consumer what is pending, which leaves out what was sent and not yet read. The marker here
            # comes at once for an empty index, else with the first value that has nothing pending behind it.
            info = await self._asked(lambda js: js.stream_info(f"KV_{self.names.index}"))
            watcher = await kv.watchall()
        try:
            caught_up = False
            if info.state.messages == 0:
                caught_up = True
                yield CAUGHT_UP
            quiet = checked = 0.0
            while True:
                try:
                    entry = await watcher.updates(timeout=_POLL_S)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    self._check_same_connection("watch the index", reconnects)
                    quiet += _POLL_S
                    if not caught_up and quiet >= self.timeout_s:
                        raise RegistryUnavailable(
                            f"watch the index: the current values did not arrive within {self.timeout_s} s"
                        ) from None
                    if caught_up and quiet - checked >= _WATCH_CHECK_S:
                        checked = quiet
                        await self._check_watch(watcher)
                    continue
                quiet = checked = 0.0
                if entry is None:
                    continue
                if not isinstance(entry, KeyValue.Entry):  # the watcher was stopped under us
                    raise RegistryUnavailable("watch the index: the watch was stopped; start it again")
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                yield Update(entry.key, None if deleted else entry.value or b"", int(entry.revision or 0))
                if not caught_up and entry.delta == 0:
                    caught_up = True
                    yield CAUGHT_UP
        finally:
            if not self._nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _check_watch(self, watcher: KeyValue.KeyWatcher) -> None:
        """RegistryUnavailable when the server does not know the watch's consumer any more, says it is offline
        (the server holding it stopped), or does not answer."""
        try:
            async with asyncio.timeout(self.timeout_s):
                subscription = watcher._sub  # nats-py keeps the watch's subscription to itself
                assert subscription is not None
                await subscription.consumer_info()
        except (TimeoutError, nats.errors.Error) as exc:
            why = exc.description if isinstance(exc, nats.js.errors.APIError) else str(exc) or type(exc).__name__
            raise RegistryUnavailable(f"watch the index: its consumer is gone ({why}); start it again") from None

    # --- archives -----------------------------------------------------------------------------------------

    async def archive_info(self, name: str) -> tuple[int, str] | None:
        """(size, "sha256:<hex>") of the object, as its metadata says; None when absent or deleted."""
        self._archives()
        async with self._call(f"read the metadata of archive {name!r}"):
            meta = await self._object_meta(name)
        if meta is None:
            return None
        digest = _sha256(meta)
        if digest is None:
            raise RegistryUnavailable(f"archive {name!r} has no SHA-256 digest in its metadata ({meta.digest!r})")
        return meta.size or 0, digest

    async def put_archive(self, name: str, data: bytes) -> None:
        """Stores `data` as the object `name` in 512 KiB chunks, unless an object of that name with the same
        digest is there already. A put cut off half-way may leave chunks that no metadata names."""
        obs = self._archives()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with self._call(f"store archive {name!r}", self._limit(len(data))):
            meta = await self._object_meta(name)
            if meta is not None and meta.size == len(data) and _sha256(meta) == digest:
                return
            chunk = min(CHUNK_SIZE, int(self._nc.max_payload))
            options = api.ObjectMetaOptions(max_chunk_size=chunk)  # without it nats-py's put raises TypeError
            await obs.put(name, data, meta=api.ObjectMeta(name=name, options=options))

    async def delete_archive(self, name: str) -> None:
        """Deletes the object `name` (its chunks are purged); nothing to do when it is absent."""
        obs = self._archives()
        async with self._call(f"delete archive {name!r}"):
            with contextlib.suppress(nats.js.errors.ObjectNotFoundError):
                await obs.delete(name)

    async def fetch_archive(self, name: str, into: Path, *, max_bytes: int, timeout_s: float | None = None) -> str:
        """Writes the object `name` into the new file `into` and returns "sha256:<hex>" of what was written.

        ArchiveTooLarge before anything is read when its metadata announces more than `max_bytes`, and while
        reading as soon as more bytes arrive than it announces (so no more than `max_bytes` are written).
        RegistryUnavailable when the object is absent or not whole, the connection is lost, no chunk comes
        for the buckets' `timeout_s`, or the whole takes longer than `timeout_s` (default: the buckets' plus a
        second a MiB). `into` is gone whenever this raises; the consumer is asked to go in every case.
        """
        self._archives()
        async with self._call(f"read the metadata of archive {name!r}"):
            meta = await self._object_meta(name)
        if meta is None:
            raise RegistryUnavailable(
                f"archive {name!r} is not in bucket {self.names.archives!r}: the index names an object that was "
                "deleted; publish the release again"
            )
        if meta.options is not None and meta.options.link is not None:
            raise RegistryUnavailable(f"archive {name!r} is a link to another object; the registry uses none")
        size = meta.size or 0
        if size > max_bytes:
            raise ArchiveTooLarge(name, size, max_bytes)
        limit = self._limit(size) if timeout_s is None else timeout_s
        sink = _create(into)
        try:
            with sink:
                return await self._read_chunks(name, meta, sink, limit)
        except BaseException:
            _remove(into)
            raise

    async def _read_chunks(self, name: str, meta: _ObjectMeta, sink: IO[bytes], limit: float) -> str:
        """Chunks are received on the event loop and written and hashed in one worker thread meanwhile (hashlib
        and file writes release the interpreter lock, so the two overlap on two cores). An archive of a few
        chunks is written and hashed as it comes: starting a thread and waiting for it would cost more."""
        if (meta.chunks or 0) <= _FEW_CHUNKS:
            hasher = hashlib.sha256()

            def put(data: bytes) -> None:
                sink.write(data)
                hasher.update(data)

            await self._receive_chunks(name, meta, put, limit)
            return "sha256:" + hasher.hexdigest()
        writer = _Writer(sink)
        try:
            await self._receive_chunks(name, meta, writer.put, limit)
        except BaseException:
            writer.abandon()  # the caller removes the file; the thread ends after what it holds
            raise
        return await asyncio.get_running_loop().run_in_executor(None, writer.close)

    async def _receive_chunks(self, name: str, meta: _ObjectMeta, put: Callable[[bytes], None], limit: float) -> None:
        size, chunks = meta.size or 0, meta.chunks or 0
        received = total = 0
        if 0 < chunks <= _FEW_CHUNKS:
            # Most extensions are one chunk: a get per chunk (one round trip each) costs less than making,
            # pulling from and deleting a consumer (three, each through the cluster's leaders).
            async with self._call(f"read archive {name!r}", limit):
                sequence = 0
                for _ in range(chunks):
                    chunk = await self._chunk_after(name, meta.nuid, sequence, received, chunks)
                    data = chunk.data or b""
                    total += len(data)
                    if total > size:
                        raise ArchiveTooLarge(name, total, size, announced=True)
                    put(data)
                    received += 1
                    sequence = (chunk.seq or 0) + 1
        elif chunks:
            doing = f"read archive {name!r}"
            per_chunk = (meta.options.max_chunk_size if meta.options else None) or -(-size // chunks)
            window = max(1, _WINDOW_BYTES // max(per_chunk, 1))
            reconnects = self._reconnects()
            unanswered = 0
            async with self._call(doing, limit), self._chunk_consumer(meta.nuid) as (sub, pull):
                while received < chunks:
                    batch = min(window, chunks - received)
                    await pull(batch)
                    for _ in range(batch):
                        msg = await self._next(sub, doing, reconnects)
                        headers = msg.headers
                        status = headers.get("Status") if headers else None
                        if status == _NO_RESPONDERS:
                            # In a cluster the consumer may live on another server that has not yet told this
                            # one of it (or is gone): no one took the request. Ask again, a little later each
                            # time, for up to timeout_s.
                            unanswered += 1
                            await self._pause_unanswered(doing, unanswered)
                            break
                        if status is not None:  # 404: no more chunks
                            raise RegistryUnavailable(
                                f"archive {name!r} is not whole: {received} of its {chunks} chunks are in the bucket "
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

    async def _chunk_after(self, name: str, nuid: str, sequence: int, received: int, chunks: int) -> RawStreamMsg:
        """The first chunk of the object at or after `sequence` in its stream."""
        subject = f"$O.{self.names.archives}.C.{nuid}"
        stream = f"OBJ_{self.names.archives}"
        try:
            return await self._asked(lambda js: js.get_msg(stream, seq=sequence, subject=subject, next=True))
        except nats.js.errors.NotFoundError:
            raise RegistryUnavailable(
                f"archive {name!r} is not whole: {received} of its {chunks} chunks are in the bucket; publish it again"
            ) from None

    async def _pause_unanswered(self, doing: str, times: int) -> None:
        """The pause before asking again a consumer that no one answered for (status 503): 1 ms, doubling up to
        `_POLL_S`; RegistryUnavailable once such pauses add up to `timeout_s`."""
        waited = sum(min(_POLL_S, 0.001 * 2**n) for n in range(times - 1))
        if waited >= self.timeout_s:
            raise RegistryUnavailable(
                f"{doing}: no server answered for its consumer within {self.timeout_s} s (status 503): "
                "the server holding it may have stopped; try again"
            )
        await asyncio.sleep(min(_POLL_S, 0.001 * 2 ** (times - 1)))

    @contextlib.asynccontextmanager
    async def _chunk_consumer(self, nuid: str) -> AsyncIterator[tuple[Subscription, Callable[[int], Awaitable[None]]]]:
        """An ephemeral pull consumer of the chunks on `$O.<bucket>.C.<nuid>`: the subscription its messages
        come on, and `pull(n)` that asks for the next n (without waiting: what is not there is answered by a
        404 status at once). The subscription and the consumer go at the end."""
        stream = f"OBJ_{self.names.archives}"
        consumer = f"fetch-{secrets.token_hex(8)}"
        inbox = self._nc.new_inbox()
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"

        async def pull(batch: int) -> None:
            await self._nc.publish(next_subject, json.dumps({"batch": batch, "no_wait": True}).encode(), reply=inbox)

        sub = await self._nc.subscribe(inbox)
        try:
            await self._js.add_consumer(
                stream,
                api.ConsumerConfig(
                    name=consumer,
                    filter_subject=f"$O.{self.names.archives}.C.{nuid}",
                    deliver_policy=api.DeliverPolicy.ALL,
                    ack_policy=api.AckPolicy.NONE,
                    mem_storage=True,
                    num_replicas=1,
                    inactive_threshold=self._consumer_idle_s,
                ),
            )
            try:
                yield sub, pull
            finally:
                await self._forget_consumer(stream, consumer)
        finally:
            if not self._nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _next(self, sub: Subscription, doing: str, reconnects: int) -> Msg:
        """The subscription's next message; RegistryUnavailable when the connection goes or nothing comes for
        `timeout_s`."""
        waited = 0.0
        while True:
            try:
                msg: Msg = await sub.next_msg(timeout=_POLL_S)
                return msg
            except nats.errors.TimeoutError:
                self._check_same_connection(doing, reconnects)
                waited += _POLL_S
                if waited >= self.timeout_s:
                    raise RegistryUnavailable(f"{doing}: nothing arrived for {self.timeout_s} s") from None

    async def _forget_consumer(self, stream: str, consumer: str) -> None:
        if not self._nc.is_connected:
            return  # its inactivity limit removes it
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._nc.request(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", b"", timeout=_CLEANUP_S)

    async def _object_meta(self, name: str) -> _ObjectMeta | None:
        if not name:
            raise ValueError("an archive's object name cannot be empty")
        encoded = base64.urlsafe_b64encode(name.encode()).decode()
        try:
            msg = await self._js.get_last_msg(
                f"OBJ_{self.names.archives}", f"$O.{self.names.archives}.M.{encoded}", direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        try:
            meta = msgspec.json.decode(msg.data or b"", type=_ObjectMeta)
        except msgspec.ValidationError as exc:
            raise RegistryUnavailable(f"the metadata of archive {name!r} is not an object's: {exc}") from exc
        return None if meta.deleted else meta

    # --- the connection and nats-py's errors ------------------------------------------------------------

    async def _stream_answers(self, stream: str) -> None:
        """Returns once JetStream answers for `stream`, whether it is there or not (see `_asked`)."""

        async def info(js: JetStreamContext) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):  # the caller's bind says which is missing
                await js.stream_info(stream)

        await self._asked(info)

    async def _asked(self, request: Callable[[JetStreamContext], Awaitable[_T]]) -> _T:
        """A request that only reads, sent again each `_ATTEMPT_S` it goes unanswered, within the caller's
        `_call`: while a cluster elects new leaders (a server stopped), the servers drop requests instead of
        answering them, and a single one would wait out the whole `timeout_s` for nothing."""
        while True:
            try:
                return await request(self._attempt)
            except nats.errors.TimeoutError:
                if not self._nc.is_connected:
                    raise

    @contextlib.asynccontextmanager
    async def _call(self, doing: str, limit: float | None = None) -> AsyncIterator[None]:
        """Checks the connection, bounds the block by `limit` (default `timeout_s`) and turns nats-py's errors
        into ours."""
        seconds = self.timeout_s if limit is None else limit
        if not self._nc.is_connected:
            raise RegistryUnavailable(f"cannot {doing}: not connected to NATS ({self._state()})")
        errors_before = self._nc.last_error
        try:
            async with asyncio.timeout(seconds):
                yield
        except RegistryError:
            raise
        except TimeoutError as exc:
            raise RegistryUnavailable(self._no_answer(doing, seconds, errors_before)) from exc
        except nats.errors.NoRespondersError as exc:
            raise RegistryUnavailable(f"cannot {doing}: {self._no_jetstream()}") from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            raise RegistryUnavailable(f"cannot {doing}: {self._no_jetstream()}") from exc
        except nats.js.errors.BadBucketError as exc:
            raise RegistryUnavailable(
                f"cannot {doing}: the stream behind bucket {self.names.index!r} is not a Key-Value bucket"
            ) from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise RegistryUnavailable(
                    f"cannot {doing}: a registry bucket was deleted ({self.names.index!r} or "
                    f"{self.names.archives!r}); the publisher creates them again"
                ) from exc
            raise RegistryUnavailable(f"cannot {doing}: JetStream refused: {exc.description} ({exc.err_code})") from exc
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise RegistryUnavailable(f"cannot {doing}: the connection to NATS was lost ({self._state()})") from exc
        except nats.errors.Error as exc:
            raise RegistryUnavailable(f"cannot {doing}: {exc}") from exc

    def _no_answer(self, doing: str, seconds: float, errors_before: Exception | None) -> str:
        error = self._nc.last_error
        if error is not None and error is not errors_before and "permissions violation" in str(error).lower():
            return (
                f"cannot {doing}: the server refused permission ({error}); give this user the registry's "
                f"subjects for streams KV_{self.names.index} and OBJ_{self.names.archives} (README, Security)"
            )
        if not self._nc.is_connected:
            return f"cannot {doing}: the connection to NATS was lost ({self._state()})"
        return f"cannot {doing}: NATS did not answer within {seconds:g} s; is JetStream up and the server reachable?"

    def _no_jetstream(self) -> str:
        return (
            "JetStream did not answer: the server runs without JetStream (start nats-server with -js or a "
            "jetstream block), or a registry bucket's stream is missing"
        )

    def _check_same_connection(self, doing: str, reconnects: int) -> None:
        if not self._nc.is_connected or self._reconnects() != reconnects:
            raise RegistryUnavailable(
                f"{doing}: the connection to NATS was lost ({self._state()}); start again once it is back"
            )

    def _reconnects(self) -> int:
        return int(self._nc.stats["reconnects"])

    def _state(self) -> str:
        nc = self._nc
        if nc.is_closed:
            return "the connection is closed"
        if nc.is_reconnecting:
            return "reconnecting"
        if nc.is_connected:
            return "connected again"
        return "connecting"

    def _limit(self, size: int) -> float:
        return self.timeout_s + size / _SLOWEST_BYTES_PER_S

    async def _index_bucket(self, replicas: int) -> KeyValue:
        with contextlib.suppress(nats.js.errors.BucketNotFoundError):
            return await self._js.key_value(self.names.index)
        try:
            return await self._js.create_key_value(
                bucket=self.names.index, history=HISTORY, storage=api.StorageType.FILE, replicas=replicas, direct=True
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        return await self._js.key_value(self.names.index)  # another publisher made it meanwhile, otherwise set

    async def _archive_bucket(self, replicas: int) -> ObjectStore:
        with contextlib.suppress(nats.js.errors.BucketNotFoundError):
            return await self._js.object_store(self.names.archives)
        try:
            return await self._js.create_object_store(
                self.names.archives, storage=api.StorageType.FILE, replicas=replicas
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        return await self._js.object_store(self.names.archives)

    def _index(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("call open() or create() before using the index")
        return self._kv

    def _archives(self) -> ObjectStore:
        if self._obs is None:
            raise RuntimeError("call open() or create() before using the archives")
        return self._obs


def _sha256(meta: _ObjectMeta) -> str | None:
    """The object's digest as "sha256:<hex>", from the store's "SHA-256=<base64url>"; None when it has none."""
    digest = meta.digest or ""
    if not digest.startswith(_DIGEST_PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(digest.removeprefix(_DIGEST_PREFIX))
    except ValueError:
        return None
    return "sha256:" + raw.hex() if len(raw) == hashlib.sha256().digest_size else None


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"invalid index key {key!r}: dot-separated non-empty tokens of letters, digits and -/_=")


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


def _create(path: Path) -> IO[bytes]:
    return path.open("xb")  # a file that is there already is not ours to overwrite, nor to delete


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
