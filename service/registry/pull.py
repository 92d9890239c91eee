"""Pull consumers of the registry's own on a bucket's stream, reached through the JetStream API prefix: made with
a name, asked for messages (`MSG.NEXT`), deleted at the end. The index watch (`index_watch.py`) and an archive's
chunks (`chunks.py`) are read with them.

Pull only: a push consumer delivers wherever its maker says, which across accounts needs inboxes exported as
streams, and lets any reader deliver the registry's records into another user's inbox. Acknowledgements are off
(AckPolicy NONE), so `$JS.ACK` need not be reachable either. Each consumer is in memory on one server, and has an
inbox of its own: what comes there is a stored message, or a status (`Status`, `status`): 100 an idle heartbeat,
404 no messages (a `no_wait` pull), 408 a pull request that expired, 409 the consumer deleted (or another end of a
pull), 503 no one took the request.

The subjects written here (create, `MSG.NEXT`, delete) take the API prefix; a consumer is made on the named
`CONSUMER.CREATE.<stream>.<name>`, which an export of `CONSUMER.CREATE.<stream>.>` covers, without the filter
nats-py would add to the subject (the watch's ends in `>`, a wildcard token in a subject that is published).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from .calls import POLL_S, Calls
from .errors import RegistryUnavailable

HEARTBEAT: Final = "100"
NO_MESSAGES: Final = "404"
EXPIRED: Final = "408"
ENDED: Final = "409"
NO_RESPONDERS: Final = "503"
_CLEANUP_S: Final = 1.0  # a consumer delete that takes longer is left to the consumer's inactivity limit
_cleanups: set[asyncio.Task[None]] = set()  # deletes still running after their caller was cancelled


def status(msg: Msg) -> tuple[str | None, str]:
    """A message's status and its description; (None, "") for a stored message."""
    headers = msg.headers
    if not headers or "Status" not in headers:
        return None, ""
    return headers["Status"], str(headers.get(api.Header.DESCRIPTION) or headers.get("Description") or "")


class PullConsumer:
    """One pull consumer, made by `pull_consumer`: its name, what the server said when it made it, its inbox."""

    def __init__(self, calls: Calls, stream: str, name: str, sub: Subscription, info: api.ConsumerInfo) -> None:
        self.stream = stream
        self.name = name
        self.info = info
        self._calls = calls
        self._sub = sub
        self._next = calls.api(f"CONSUMER.MSG.NEXT.{stream}.{name}")

    async def pull(
        self, batch: int, *, no_wait: bool = False, expires_s: float | None = None, heartbeat_s: float | None = None
    ) -> None:
        """Asks for the next `batch` messages: at once (`no_wait`: what is not there is answered by 404), or
        until `expires_s` (then 408), with a heartbeat (100) each `heartbeat_s` in which nothing came."""
        request: dict[str, Any] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        if expires_s is not None:
            request["expires"] = int(expires_s * 1e9)
        if heartbeat_s is not None:
            request["idle_heartbeat"] = int(heartbeat_s * 1e9)
        await self._calls.nc.publish(self._next, json.dumps(request).encode(), reply=self._sub.subject)

    async def next_msg(self) -> Msg | None:
        """The next message or status on the consumer's inbox; None when nothing came within `POLL_S` (the
        caller then looks at the connection)."""
        try:
            msg: Msg = await self._sub.next_msg(timeout=POLL_S)
        except nats.errors.TimeoutError:
            return None
        return msg

    async def alive(self) -> str | None:
        """None while the server knows the consumer and says it is online; else why not (it was deleted, the
        server holding it stopped, no answer within `timeout_s`)."""
        calls = self._calls
        try:
            async with asyncio.timeout(calls.timeout_s):
                await calls.js.consumer_info(self.stream, self.name, timeout=calls.timeout_s)
        except (TimeoutError, nats.errors.Error) as exc:
            return exc.description if isinstance(exc, nats.js.errors.APIError) else str(exc) or type(exc).__name__
        return None


@contextlib.asynccontextmanager
async def pull_consumer(
    calls: Calls, stream: str, config: api.ConsumerConfig, *, prefix: str
) -> AsyncIterator[PullConsumer]:
    """A new pull consumer on `stream` named `<prefix>-<random>`, with `config`'s delivery, filter and inactivity
    limit, no acknowledgements, in memory on one server. Made within the caller's `calls.bounded`; the consumer is
    asked to go and its inbox closed at the end, even when the caller is cancelled."""
    nc = calls.nc
    name = f"{prefix}-{secrets.token_hex(8)}"
    config = config.evolve(name=name, ack_policy=api.AckPolicy.NONE, mem_storage=True, num_replicas=1)
    sub = await nc.subscribe(nc.new_inbox())
    made = False
    try:
        body = json.dumps({"stream_name": stream, "config": config.as_dict()}).encode()
        reply = await calls.requested(f"CONSUMER.CREATE.{stream}.{name}", body)  # the same again: the same one
        answer = json.loads(reply.data)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises the error JetStream sent
        made = True
        yield PullConsumer(calls, stream, name, sub, api.ConsumerInfo.from_response(answer))
    finally:
        cleanup = asyncio.ensure_future(_cleanup(calls, stream, name if made else None, sub))
        _cleanups.add(cleanup)
        cleanup.add_done_callback(_cleanups.discard)
        await asyncio.shield(cleanup)  # cancelled, the caller goes on at once while the cleanup finishes


async def _cleanup(calls: Calls, stream: str, consumer: str | None, sub: Subscription) -> None:
    nc = calls.nc
    if consumer is not None and nc.is_connected:  # else its inactivity limit removes it
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await nc.request(calls.api(f"CONSUMER.DELETE.{stream}.{consumer}"), b"", timeout=_CLEANUP_S)
    if not nc.is_closed:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def pause_unanswered(calls: Calls, doing: str, times: int) -> None:
    """The pause before asking again a consumer that no one answered for (status 503): 1 ms, doubling up to
    `POLL_S`; RegistryUnavailable once such pauses add up to `timeout_s`. In a cluster the consumer may live on
    another server that has not yet told this one of it, or that stopped."""
    waited = sum(min(POLL_S, 0.001 * 2**n) for n in range(times - 1))
    if waited >= calls.timeout_s:
        raise RegistryUnavailable(
            f"{doing}: no server answered for its consumer within {calls.timeout_s} s (status 503): "
            "the server holding it may have stopped; try again"
        )
    await asyncio.sleep(min(POLL_S, 0.001 * 2 ** (times - 1)))
