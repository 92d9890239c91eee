"""The index's Key-Value bucket: one record per extension, read, written with compare-and-set, and watched.

What the records say is `index.py`'s; here they are bytes under a key. Keys are checked before any request:
nats-py lets some malformed ones through (`a..b`), which then time out. Reads are direct gets (or
`STREAM.MSG.GET`) and the pull consumer of `index_watch.py`: nothing here makes a push consumer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator

import nats.js.errors
from nats.js.kv import KeyValue

from . import index_watch
from .calls import Calls
from .errors import Conflict
from .index_watch import CAUGHT_UP, CaughtUp, Update

__all__ = ["CAUGHT_UP", "CaughtUp", "IndexBucket", "Update"]

_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")  # nats-py lets "a..b" through, then times out


class IndexBucket:
    """The index bucket as bound by `RegistryBuckets.open`."""

    def __init__(self, calls: Calls, kv: KeyValue) -> None:
        self._calls = calls
        self._kv = kv

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """The key's value and revision; (None, 0) when there is no such key or it was deleted."""
        _check_key(key)
        async with self._calls.bounded(f"read index key {key!r}"):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # nats-py turns a deleted key into this too
                return None, 0
        return entry.value or b"", int(entry.revision or 0)

    async def put(self, key: str, value: bytes, revision: int) -> int:
        """Writes `value` if the key is still at `revision` (0: the key has no record); the new revision.
        Conflict when someone wrote it first."""
        _check_key(key)
        if revision < 0:
            raise ValueError(f"a revision is 0 (no record) or positive, not {revision}")
        async with self._calls.bounded(f"write index key {key!r}"):
            try:
                if revision == 0:
                    return int(await self._kv.create(key, value))
                return int(await self._kv.update(key, value, last=revision))
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                raise Conflict(key, revision) from exc

    async def entries(self) -> list[Update]:
        """Every key's current value (deleted keys left out); [] for an empty bucket."""
        latest: dict[str, Update] = {}
        async with self._calls.bounded("list the index"), contextlib.aclosing(self.watch()) as updates:
            async for item in updates:
                if isinstance(item, CaughtUp):
                    break
                latest[item.key] = item
        return [u for u in latest.values() if u.value is not None]

    def watch(self) -> AsyncGenerator[Update | CaughtUp, None]:
        """Every key's current value (None for a deleted one), then CAUGHT_UP, then each change as it comes.

        Raises RegistryUnavailable as soon as the connection is lost, even if nats-py then reconnects, and when
        the watch's consumer is gone while the connection is not (deleted; or in a cluster it may live on another
        server, which stopped: its heartbeats stop, and the server is asked): the caller calls `watch` anew
        (once connected again), which delivers the current values again (what changed meanwhile included) and
        then CAUGHT_UP. A message skipped on the way is read again from a new consumer, without the caller
        knowing. Close the iterator when done (`contextlib.aclosing`), which deletes the consumer.
        """
        return index_watch.watch(self._calls)


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"invalid index key {key!r}: dot-separated non-empty tokens of letters, digits and -/_=")
