"""The index's Key-Value bucket: one record per extension, read, written with compare-and-set, and watched.

What the records say is `index.py`'s; here they are bytes under a key. Keys are checked before any request:
nats-py lets some malformed ones through (`a..b`), which then time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import ClassVar, Final

import nats.errors
import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .calls import POLL_S, Calls
from .errors import Conflict, RegistryUnavailable

_WATCH_CHECK_S: Final = 1.0  # how often a quiet watch asks whether its consumer is still there
_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")  # nats-py lets "a..b" through, then times out


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

    async def watch(self) -> AsyncGenerator[Update | CaughtUp, None]:
        """Every key's current value (None for a deleted one), then CAUGHT_UP, then each change as it comes.

        Raises RegistryUnavailable as soon as the connection is lost, even if nats-py then reconnects, and when
        the watch's consumer is gone while the connection is not (in a cluster it may live on another server,
        which stopped; asked each `_WATCH_CHECK_S` of quiet): the caller calls `watch` anew (once connected
        again), which delivers the current values again (what changed meanwhile included) and then CAUGHT_UP.
        Left to itself, nats-py's ordered consumer would notice only after its missed heartbeats, 10 to 20 s
        later. Close the iterator when done (`contextlib.aclosing`), which stops the consumer.
        """
        calls = self._calls
        reconnects = calls.reconnects()
        async with calls.bounded("watch the index"):
            # nats-py's own "caught up" marker (None) can come before values already on their way: it asks
            # the consumer what is pending, which leaves out what was sent and not yet read. The marker here
            # comes at once for an empty index, else with the first value that has nothing pending behind it.
            info = await calls.asked(lambda js: js.stream_info(calls.names.index_stream))
            watcher = await self._kv.watchall()
        try:
            caught_up = False
            if info.state.messages == 0:
                caught_up = True
                yield CAUGHT_UP
            quiet = checked = 0.0
            while True:
                try:
                    entry = await watcher.updates(timeout=POLL_S)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    calls.check_same_connection("watch the index", reconnects)
                    quiet += POLL_S
                    if not caught_up and quiet >= calls.timeout_s:
                        raise RegistryUnavailable(
                            f"watch the index: the current values did not arrive within {calls.timeout_s} s"
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
            if not calls.nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _check_watch(self, watcher: KeyValue.KeyWatcher) -> None:
        """RegistryUnavailable when the server does not know the watch's consumer any more, says it is offline
        (the server holding it stopped), or does not answer."""
        try:
            async with asyncio.timeout(self._calls.timeout_s):
                subscription = watcher._sub  # nats-py keeps the watch's subscription to itself
                assert subscription is not None
                await subscription.consumer_info()
        except (TimeoutError, nats.errors.Error) as exc:
            why = exc.description if isinstance(exc, nats.js.errors.APIError) else str(exc) or type(exc).__name__
            raise RegistryUnavailable(f"watch the index: its consumer is gone ({why}); start it again") from None


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"invalid index key {key!r}: dot-separated non-empty tokens of letters, digits and -/_=")
