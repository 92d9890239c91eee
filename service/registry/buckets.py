"""The registry's two buckets on NATS JetStream, bound on one connection: the index (Key-Value, one
record per extension, written with compare-and-set: `index_bucket.py`) and the archives (Object Store, one object
per archive: `archive_bucket.py`).

`extension-loader setup` makes them (`app/setup.py`, keeping `HISTORY` revisions of each record); the publisher
and loaders `open` them, creating nothing, and `problems` says what is wrong with buckets someone changed by
hand. Every call is bounded by `timeout_s` and goes through the JetStream API prefix `api_prefix`
(`calls.py`): a reader in another account than the buckets' reaches them through the prefix its account
imports their read API under, with direct gets and pull consumers only.
"""

from __future__ import annotations

import logging
from typing import Final

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from .archive_bucket import ArchiveBucket
from .calls import DEFAULT_API_PREFIX, Calls
from .errors import RegistryUnavailable
from .index_bucket import IndexBucket
from .mirror import MirrorReading, missing, read_mirror
from .names import DEFAULT_NAMES, BucketNames

HISTORY: Final = 16  # revisions the index keeps of each record

log = logging.getLogger(__name__)


class RegistryBuckets:
    """The index and archive buckets on one NATS connection, which the caller owns (and reconnects)."""

    def __init__(
        self,
        nc: Client,
        names: BucketNames = DEFAULT_NAMES,
        *,
        timeout_s: float = 5.0,
        api_prefix: str = DEFAULT_API_PREFIX,
    ) -> None:
        self.names = names
        self.timeout_s = timeout_s
        self.api_prefix = api_prefix
        self._calls = Calls(nc, names, timeout_s, api_prefix)
        self._index: IndexBucket | None = None
        self._archives: ArchiveBucket | None = None

    @property
    def index(self) -> IndexBucket:
        if self._index is None:
            raise RuntimeError("call open() before using the index")
        return self._index

    @property
    def archives(self) -> ArchiveBucket:
        if self._archives is None:
            raise RuntimeError("call open() before using the archives")
        return self._archives

    async def problems(self) -> list[str]:
        """What is wrong with buckets that were there already (made by hand, say): a time to live deletes
        published archives and index records, which a published version must outlive."""
        found: list[str] = []
        for stream in (self.names.index_stream, self.names.archive_stream):

            async def read(js: JetStreamContext, stream: str = stream) -> api.StreamInfo:
                return await js.stream_info(stream)

            async with self._calls.bounded(f"read the settings of stream {stream}"):
                info = await self._calls.asked(read)
            if info.config.max_age:
                found.append(
                    f"stream {stream} deletes what is older than {info.config.max_age:g} s (a bucket ttl): "
                    "published versions would vanish; `extension-loader setup` removes the ttl"
                )
        return found

    async def mirrors(self) -> tuple[MirrorReading, MirrorReading] | None:
        """At an edge site, how the index's and the archives' mirrors of the hub's buckets stand now; None when
        the index is no mirror (the registry itself)."""
        index = await read_mirror(self._calls, self.names.index_stream)
        if index is None or index.error is not None:
            return None
        archives = await read_mirror(self._calls, self.names.archive_stream)
        return index, archives or missing(self.names.archive_stream, "not a mirror of the hub's")

    async def open(self, *, archives: bool = True) -> None:
        """Binds to both buckets (`archives=False`: the index only, for a reader of the index such
        as `search`, whom nats.conf does not let near the archives), creating nothing; RegistryUnavailable names
        any that is missing."""
        missing: list[str] = []
        streams = [self.names.index_stream, *([self.names.archive_stream] if archives else [])]
        js = self._calls.js
        async with self._calls.bounded("open the registry buckets"):
            for stream in streams:
                await self._calls.stream_answers(stream)
            try:
                self._index = IndexBucket(self._calls, await js.key_value(self.names.index))
            except nats.js.errors.BucketNotFoundError:
                missing.append(f"the index (Key-Value bucket {self.names.index!r})")
            try:
                if archives:
                    await js.object_store(self.names.archives)  # binding it says whether it is there
                    self._archives = ArchiveBucket(self._calls)
            except nats.js.errors.BucketNotFoundError:
                missing.append(f"the archives (Object Store bucket {self.names.archives!r})")
        if missing:
            raise RegistryUnavailable(
                f"{' and '.join(missing)} of the registry {'are' if len(missing) > 1 else 'is'} not on this server: "
                "run `extension-loader setup` (as admin) to create the registry's buckets, or check the bucket names "
                "in the configuration"
            )
