"""The archives' Object Store bucket: one object per archive, stored in chunks, read back whole into a file.

An object's metadata (its size, chunk count and digest) is read here, straight from its stream; reading its
chunks is `chunks.py`'s. What an archive holds, and how it is packed and unpacked, is `archive.py`'s.

The chunks of an archive put here go on the subject named by the archive's own digest (`$O.<bucket>.C.<hex>`,
the hex its object name `sha256/<hex>` carries) rather than a random one, unless something is on that subject
already. A fetch then asks for the first chunk there alongside the metadata: one round trip instead of two for
the usual archive of one chunk. The metadata still decides: that chunk is used only when the metadata names that
subject; otherwise (an object stored by anything else, or before this) the chunks are read where it says. What is
read is checked against the signed digest by the caller either way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.api import RawStreamMsg
from nats.nuid import NUID

from .calls import Calls
from .chunks import Chunks, read_chunks
from .errors import ArchiveTooLarge, RegistryUnavailable

CHUNK_SIZE: Final = 512 * 1024  # below the server's max_payload (1 MB in nats.conf); puts faster than 128 KiB
_SLOWEST_BYTES_PER_S: Final = 1024 * 1024  # an archive moving slower than this counts as a link that is down
_DIGEST_PREFIX: Final = "SHA-256="
_CONTENT_NAME: Final = re.compile(r"sha256/([0-9a-f]{64})")
# How long a first chunk asked for ahead is waited for at least, once the metadata is in.
_AHEAD_AT_LEAST_S: Final = 0.005


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


class ArchiveBucket:
    """The archive bucket as bound by `RegistryBuckets.open`."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls
        self._ahead: set[asyncio.Future[RawStreamMsg | None]] = set()  # first chunks asked for, until answered

    async def info(self, name: str) -> tuple[int, str] | None:
        """(size, "sha256:<hex>") of the object, as its metadata says; None when absent or deleted."""
        async with self._calls.bounded(f"read the metadata of archive {name!r}"):
            meta = await self._meta(name)
        if meta is None:
            return None
        digest = _sha256(meta)
        if digest is None:
            raise RegistryUnavailable(f"archive {name!r} has no SHA-256 digest in its metadata ({meta.digest!r})")
        return meta.size or 0, digest

    async def put(self, name: str, data: bytes) -> None:
        """Stores `data` as the object `name` in 512 KiB chunks, unless an object of that name with the same
        digest is there already (archives are named by their sha256: the same name is the same bytes).

        Without STREAM.PURGE, which a publisher may not use: nats-py's `ObjectStore.put` purges the chunks of the
        object it replaces, and those of a put that fails half-way. Here the chunks go on a subject of their own,
        then the metadata (a rollup of its subject) names them, and the chunks of an object replaced are rolled
        up into one empty message. A put cut off half-way may leave chunks that no metadata names."""
        sha = hashlib.sha256(data)
        async with self._calls.bounded(f"store archive {name!r}", self._limit(len(data))):
            meta = await self._meta(name)
            if meta is not None and meta.size == len(data) and _sha256(meta) == "sha256:" + sha.hexdigest():
                return
            chunk = min(CHUNK_SIZE, int(self._calls.nc.max_payload))
            nuid = await self._chunk_nuid(sha.hexdigest())
            for start in range(0, len(data), chunk):
                await self._calls.js.publish(self._calls.names.chunk_subject(nuid), data[start : start + chunk])
            digest = _DIGEST_PREFIX + base64.urlsafe_b64encode(sha.digest()).decode()
            await self._write_meta(
                name,
                nuid=nuid,
                size=len(data),
                chunks=-(-len(data) // chunk),
                mtime=datetime.now(UTC).isoformat(),
                digest=digest,
                options=api.ObjectMetaOptions(max_chunk_size=chunk),
            )
            if meta is not None:
                await self._roll_up(meta.nuid)

    async def _chunk_nuid(self, hexdigest: str) -> str:
        """Where a new object's chunks go: the subject named by their digest, unless anything is on it already (a
        put cut off half-way, or whatever a writer of the bucket put there), which a fetch must not take for its
        first chunk; then a random one."""
        try:
            await self._calls.js.get_last_msg(
                self._calls.names.archive_stream, self._calls.names.chunk_subject(hexdigest), direct=True
            )
        except nats.js.errors.NotFoundError:
            return hexdigest
        return NUID().next().decode()

    async def delete(self, name: str) -> None:
        """Deletes the object `name`: its metadata says deleted and its chunks are rolled up into one empty
        message, without STREAM.PURGE (as `put`); nothing to do when it is absent."""
        async with self._calls.bounded(f"delete archive {name!r}"):
            meta = await self._meta(name)
            if meta is None:
                return
            await self._write_meta(name, nuid=meta.nuid, size=0, chunks=0, mtime="", digest="", deleted=True)
            await self._roll_up(meta.nuid)

    async def _write_meta(self, name: str, **fields: Any) -> None:
        """The object's metadata as nats-py writes it (its `ObjectInfo` as JSON), replacing any before it."""
        info = api.ObjectInfo(name=name, bucket=self._calls.names.archives, **fields)
        subject = self._calls.names.meta_subject(name)
        await self._calls.js.publish(subject, json.dumps(info.as_dict()).encode(), headers={api.Header.ROLLUP: "sub"})

    async def _roll_up(self, nuid: str) -> None:
        """The chunks on `nuid`'s subject replaced by one empty message: what a purge of them would free."""
        await self._calls.js.publish(self._calls.names.chunk_subject(nuid), b"", headers={api.Header.ROLLUP: "sub"})

    async def fetch(self, name: str, into: Path, *, max_bytes: int, timeout_s: float | None = None) -> str:
        """Writes the object `name` into the new file `into` and returns "sha256:<hex>" of what was written.

        ArchiveTooLarge before anything is read when its metadata announces more than `max_bytes`, and while
        reading as soon as more bytes arrive than it announces (so no more than `max_bytes` are written).
        RegistryUnavailable when the object is absent or not whole, the connection is lost, no chunk comes
        for the buckets' `timeout_s`, or the whole takes longer than `timeout_s` (default: the buckets' plus a
        second a MiB). `into` is gone whenever this raises; the consumer is asked to go in every case.
        """
        async with self._calls.bounded(f"read the metadata of archive {name!r}"):
            meta, first = await self._meta_and_first_chunk(name)
        if meta is None:
            raise RegistryUnavailable(
                f"archive {name!r} is not in bucket {self._calls.names.archives!r}: the index names an object that "
                "was deleted; publish the release again"
            )
        if meta.options is not None and meta.options.link is not None:
            raise RegistryUnavailable(f"archive {name!r} is a link to another object; the registry uses none")
        size = meta.size or 0
        if size > max_bytes:
            raise ArchiveTooLarge(name, size, max_bytes)
        largest = meta.options.max_chunk_size if meta.options else None
        chunks = Chunks(name, meta.nuid, size, meta.chunks or 0, largest, first)
        limit = self._limit(size) if timeout_s is None else timeout_s
        sink = _create(into)
        try:
            with sink:
                return await read_chunks(self._calls, chunks, sink, limit)
        except BaseException:
            _remove(into)
            raise

    async def _meta_and_first_chunk(self, name: str) -> tuple[_ObjectMeta | None, RawStreamMsg | None]:
        """The object's metadata and, asked for at the same time, the first message on the chunk subject its name
        gives (`content_nuid`): that message only when the metadata names that subject, else None. The question
        ahead is waited for no longer than the metadata took once the metadata is in (then the chunks are read as
        usual), and is never sent again: an unanswered one (a cluster electing leaders, a user that may not ask)
        costs a fetch no more than that, and ends on its own at the connection's time-out."""
        nuid = content_nuid(name)
        if nuid is None:
            return await self._meta(name), None
        ahead = asyncio.ensure_future(self._first_chunk(nuid))
        self._ahead.add(ahead)
        ahead.add_done_callback(self._ahead.discard)
        began = time.monotonic()
        meta = await self._meta(name)
        if meta is None or meta.nuid != nuid:
            return meta, None
        done, _ = await asyncio.wait({ahead}, timeout=max(time.monotonic() - began, _AHEAD_AT_LEAST_S))
        return meta, ahead.result() if done else None

    async def _first_chunk(self, nuid: str) -> RawStreamMsg | None:
        """The first message on `nuid`'s chunk subject, asked once; None when there is none, or when the question
        failed (the chunks are then read as the metadata says, and any failure is met there)."""
        try:
            return await self._calls.js.get_msg(
                self._calls.names.archive_stream, seq=0, subject=self._calls.names.chunk_subject(nuid), next=True
            )
        except (nats.errors.Error, TimeoutError):
            return None

    async def _meta(self, name: str) -> _ObjectMeta | None:
        if not name:
            raise ValueError("an archive's object name cannot be empty")
        names = self._calls.names
        try:
            msg = await self._calls.js.get_last_msg(names.archive_stream, names.meta_subject(name), direct=True)
        except nats.js.errors.NotFoundError:
            return None
        try:
            meta = msgspec.json.decode(msg.data or b"", type=_ObjectMeta)
        except msgspec.ValidationError as exc:
            raise RegistryUnavailable(f"the metadata of archive {name!r} is not an object's: {exc}") from exc
        return None if meta.deleted else meta

    def _limit(self, size: int) -> float:
        return self._calls.timeout_s + size / _SLOWEST_BYTES_PER_S


def content_nuid(name: str) -> str | None:
    """The nuid an archive's chunks are put under here: the hex of its digest, as its name `sha256/<hex>` carries
    it; None for a name that carries none."""
    found = _CONTENT_NAME.fullmatch(name)
    return found.group(1) if found is not None else None


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


def _create(path: Path) -> IO[bytes]:
    return path.open("xb")  # a file that is there already is not ours to overwrite, nor to delete


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
