"""Watching the index with a pull consumer of our own: every key's current value, then CAUGHT_UP, then each
change as it comes.

nats-py's watch is an ordered push consumer, which across accounts would need inboxes exported as streams (and
`$JS.FC`): `pull.py` says why the registry does without. Here one consumer delivers the last value of each key
on `$KV.<bucket>.>`, then each new one, to long-poll pull requests: each asks for up to `_BATCH` messages and
expires after `_EXPIRES_S` (well below the two minutes a service export lets a response take), with a heartbeat
from the server each `_HEARTBEAT_S` in which nothing changed.

What could go wrong, and what is done:
- the connection is lost (even if nats-py reconnects at once): RegistryUnavailable; the caller starts anew.
- the consumer is deleted (status 409), or no heartbeat comes and the server no longer knows it or says it is
  offline (in a cluster, the server holding it stopped): RegistryUnavailable, "its consumer is gone".
- a message skipped (the consumer's sequence jumps, or a heartbeat says more was delivered than came: someone
  else pulled from it, or a message was lost on the way): a new consumer starts from the stream sequence after
  the last message seen, so nothing is missed and nothing comes twice.
- the server deletes a consumer no one pulled from for `_IDLE_LIMIT_S` (a watcher gone without a word, or one
  whose connection was lost); closing the watch deletes it at once. A caller that keeps the watch waiting longer
  than that between two updates finds the consumer gone, and starts anew.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import ClassVar, Final

import nats.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE

from .calls import POLL_S, Calls
from .errors import RegistryUnavailable
from .pull import ENDED, EXPIRED, HEARTBEAT, NO_MESSAGES, NO_RESPONDERS, PullConsumer, pause_unanswered, pull_consumer
from .pull import status as status_of

_BATCH: Final = 256  # messages one pull request asks for
_EXPIRES_S: Final = 5.0  # a pull request waits this long for changes, then another is sent
_HEARTBEAT_S: Final = 1.0  # the server says it is still there this often while nothing changes
_MISSED_S: Final = 2 * _HEARTBEAT_S + POLL_S  # heard nothing for this long: ask whether the consumer is there
_IDLE_LIMIT_S: Final = 120.0  # longer than a caller spends on one update (the follower's automatic loads)
_LEADERSHIP_CHANGE: Final = "leadership change"
_DOING: Final = "watch the index"


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


async def watch(calls: Calls) -> AsyncGenerator[Update | CaughtUp, None]:
    """`IndexBucket.watch`, which says what it promises."""
    reconnects = calls.reconnects()
    state = _Watch(calls, reconnects)
    async with contextlib.AsyncExitStack() as stack:
        await state.start(stack)
        while True:
            item = await state.next()
            if item is None:  # a gap: a new consumer from the last sequence seen, the old one deleted
                await stack.aclose()
                await state.start(stack)
                continue
            yield item


class _Watch:
    """The state of one watch across the consumers it goes through."""

    def __init__(self, calls: Calls, reconnects: int) -> None:
        self._calls = calls
        self._reconnects = reconnects
        self._prefix = f"$KV.{calls.names.index}."
        self._consumer: PullConsumer | None = None
        self._caught_up = False
        self._caught_up_next = False  # CAUGHT_UP is due after the update just returned
        self._last_seen = 0  # the stream sequence of the last message returned
        self._delivered = 0  # the current consumer's sequence of the last message received
        self._owed = 0  # messages the pull request in flight may still bring
        self._heard = 0.0  # when something last came from the server (or a request was sent)
        self._progress = 0.0  # when the current values last moved forward (before CAUGHT_UP)
        self._unanswered = 0

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """A new consumer: every key's last value the first time, else what came after the last one seen."""
        calls = self._calls
        if self._last_seen:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._last_seen + 1
            )
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        config = config.evolve(filter_subject=f"{self._prefix}>", inactive_threshold=_IDLE_LIMIT_S)
        async with calls.bounded(_DOING):
            consumer = await stack.enter_async_context(
                pull_consumer(calls, calls.names.index_stream, config, prefix="watch")
            )
            self._consumer = consumer
            self._delivered = self._unanswered = 0
            self._progress = self._now()
            await self._pull()
        if not self._caught_up and not consumer.info.num_pending:
            self._caught_up_next = True  # an empty index (or nothing after the last value seen)

    async def next(self) -> Update | CaughtUp | None:
        """The next update, or CAUGHT_UP; None when a message was skipped and a new consumer must start."""
        if self._caught_up_next:
            self._caught_up_next, self._caught_up = False, True
            return CAUGHT_UP
        calls, consumer = self._calls, self._consumer
        assert consumer is not None
        while True:
            calls.check_same_connection(_DOING, self._reconnects)
            msg = await consumer.next_msg()
            now = self._now()
            if msg is None:
                await self._quiet(now)
                continue
            self._heard = now
            code, description = status_of(msg)
            if code is None:
                update = self._stored(msg, consumer)
                if update is not None and self._owed <= 0:
                    await self._pull()  # the request is spent: the server sends nothing more for it
                return update
            if code != NO_RESPONDERS:
                self._unanswered = 0
            if code == HEARTBEAT:
                last = int((msg.headers or {}).get("Nats-Last-Consumer") or 0)
                if last > self._delivered:
                    return None  # delivered to someone else, or lost on the way
            elif code in (EXPIRED, NO_MESSAGES) or (code == ENDED and description.lower() == _LEADERSHIP_CHANGE):
                await self._pull()
            elif code == NO_RESPONDERS:
                self._unanswered += 1
                await pause_unanswered(calls, _DOING, self._unanswered)
                await self._pull()
            elif code == ENDED:
                raise RegistryUnavailable(f"{_DOING}: its consumer is gone ({description}); start it again")
            else:
                raise RegistryUnavailable(f"{_DOING}: JetStream refused its pull request ({code} {description})")

    def _stored(self, msg: Msg, consumer: PullConsumer) -> Update | None:
        try:
            meta = msg.metadata
        except nats.errors.Error:
            return None  # not a JetStream delivery: nothing of ours; take the stream from the last one seen
        if meta.consumer != consumer.name or meta.sequence.consumer != self._delivered + 1:
            return None
        self._delivered = meta.sequence.consumer
        self._last_seen = meta.sequence.stream
        self._owed -= 1
        self._progress = self._heard
        if not self._caught_up and meta.num_pending == 0:
            self._caught_up_next = True
        headers = msg.headers or {}
        # A marker the server placed (nats-server 2.11+: a key's time to live, a purge) says the key has no value.
        deleted = headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers
        value = None if deleted else msg.data or b""
        return Update(msg.subject.removeprefix(self._prefix), value, meta.sequence.stream)

    async def _quiet(self, now: float) -> None:
        """Nothing came for a while: give up on current values that do not come, and ask whether the consumer is
        there when its heartbeats stop."""
        calls = self._calls
        if not self._caught_up and now - self._progress >= calls.timeout_s:
            raise RegistryUnavailable(f"{_DOING}: the current values did not arrive within {calls.timeout_s} s")
        if now - self._heard >= _MISSED_S:
            assert self._consumer is not None
            why = await self._consumer.alive()
            if why is not None:
                raise RegistryUnavailable(f"{_DOING}: its consumer is gone ({why}); start it again")
            await self._pull()  # the request was lost on the way; the consumer is there

    async def _pull(self) -> None:
        assert self._consumer is not None
        await self._consumer.pull(_BATCH, expires_s=_EXPIRES_S, heartbeat_s=_HEARTBEAT_S)
        self._owed = _BATCH
        self._heard = self._now()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
