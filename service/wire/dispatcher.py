"""The dispatcher: from a message on a request subject to its reply, and the one place where any exception
becomes an error reply.

nats-py awaits a subscription's callback before it hands over the next message, so the callback must never
wait. The callback decodes the request (once: what follows gets the struct) and, for a load, looks at the
cache (once: a miss is handed on, so the load does not look again). A load the cache answers as it stands
(through the load handler's `look_up`), an undecodable request, and the subjects marked inline (list,
stats, ...) are answered right in the callback, which costs a fraction of starting a task; everything that
can wait (a cold load, a reload, a scan of the disk) gets a task of its own in the service's task group, and
a large reply (a discover of thousands) is encoded a slice at a time, so neither holds up the event loop. The
dispatcher counts what is in flight, so a stop can wait for it, and answers what a stop cuts off with
`unavailable` rather than nothing.

It may use the connection to reply and the publisher to send the events a handler returns; it decodes and
encodes through `codec` and leaves the work itself to the handlers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry import metrics as metrics_api
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider

from ..contract.errors import LoaderError, Unavailable
from ..contract.messages import Event, Extension
from ..core import audit, metrics
from ..core.flights import Miss
from ..core.slices import in_slices
from . import codec, replies
from .events import EventPublisher
from .frames import FrameWriter
from .handlers import Handler
from .micro import EndpointStats
from .tracing import Tracing, carried, describe, describe_outcome

log = logging.getLogger(__name__)

STOPPING = "the service is stopping; send the request again (another instance may answer it)"


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    subject: str
    request: type[Any]
    handler: Handler
    stats: EndpointStats
    inline: bool = False  # answered in the subscription's callback: waits on nothing (a large reply: its slices)
    # The load's look at the cache, made in the callback: the extension to answer with, or a Miss for the handler.
    look_up: Callable[[Any], Extension | Miss | None] | None = None


class Dispatcher:
    def __init__(
        self,
        nc: Client,
        tg: TaskGroup,
        *,
        publisher: EventPublisher,
        tracing: Tracing,
        reply_prefixes: tuple[str, ...],
    ) -> None:
        self._nc = nc
        self._reply_prefixes = reply_prefixes
        self._tg = tg
        self._publisher = publisher
        self._tracing = tracing
        self._frames = FrameWriter(nc)
        self._metrics = isinstance(metrics_api.get_meter_provider(), MeterProvider)
        self.active = 0
        self._idle: anyio.Event | None = None  # made only while a stop waits (one a request cost 5% of a hit)

    async def wait_idle(self) -> None:
        """Returns once no request is in flight."""
        while self.active:
            self._idle = anyio.Event()
            await self._idle.wait()

    def callback(self, endpoint: Endpoint) -> Callable[[Msg], Awaitable[None]]:
        """The subscription callback of one endpoint."""

        async def dispatch(msg: Msg) -> None:
            if msg.reply and not msg.reply.startswith(self._reply_prefixes):
                self._refuse(endpoint, msg)  # nothing is done for a request whose answer would go astray
                return
            started = time.perf_counter_ns()
            encoding = codec.Codec.of(msg.headers)
            self.active += 1
            try:
                request: Any = codec.decode(msg.data, endpoint.request, encoding)
            except LoaderError as exc:
                await self.handle(endpoint, msg, encoding, exc)  # nothing to wait for: answered at once
                return
            found = self._look_up(endpoint, request)
            if isinstance(found, Extension) and not self._tracing.enabled:
                # The answer orchestrators ask for most, at the least cost: no task, no span (tracing is off),
                # no audit (nothing changes), a reply encoded once per cache entry.
                error: LoaderError | None = None
                try:
                    body, headers = replies.success(found, encoding, self._nc.max_payload), replies.OK_HEADERS[encoding]
                except Exception as exc:
                    error, body, headers = replies.failure(exc, msg.subject, encoding)
                try:
                    await self._reply(msg, body, headers)
                finally:
                    self._done(endpoint, time.perf_counter_ns() - started, error)
            elif isinstance(found, Extension) or endpoint.inline:
                await self.handle(endpoint, msg, encoding, request, found)
            else:
                self._tg.start_soon(self.handle, endpoint, msg, encoding, request, found)

        return dispatch

    def _refuse(self, endpoint: Endpoint, msg: Msg) -> None:
        why = replies.refused_reply(msg.reply, self._reply_prefixes) or ""
        log.warning("refused a request on %s: %s", msg.subject, why, extra={"reply": msg.reply})
        endpoint.stats.record(0, why)
        if self._metrics:
            metrics.requests.add(1, {"messaging.destination.name": endpoint.subject, "outcome": "refused_reply"})

    def _look_up(self, endpoint: Endpoint, request: Any) -> Extension | Miss | None:
        if endpoint.look_up is None:
            return None
        try:
            return endpoint.look_up(request)
        except Exception:
            # A defect, not a hit: the general path runs the load and answers with the error if it recurs.
            log.exception("looking up %s in the cache failed", request)
            return None

    async def handle(
        self,
        endpoint: Endpoint,
        msg: Msg,
        encoding: codec.Codec,
        request: Any,
        found: Extension | Miss | None = None,
    ) -> None:
        """Answers one request, decoded already (or the `LoaderError` its decoding raised); `found` is what the
        load's look at the cache found: the extension to answer with (counted already), or a `Miss`.

        Every request gets one reply: the handler's data, its error, or, when a stop cancels the handler,
        `unavailable` (sent shielded from the cancellation)."""
        started = time.perf_counter_ns()
        error: LoaderError | None = None
        replied = False
        events: Sequence[Event] = ()
        audit.handling(msg.headers, msg.subject)
        try:
            group = endpoint.stats.queue_group
            with self._tracing.request_span(msg.subject, msg.headers, len(msg.data), group) as span:
                try:
                    if isinstance(request, LoaderError):
                        raise request
                    if span.is_recording():
                        describe(span, request)
                    if isinstance(found, Extension):
                        data: Any = found
                        describe_outcome(span, found, cold=False)
                    elif found is not None:
                        data, events = await endpoint.handler(request, span, found)
                    else:
                        data, events = await endpoint.handler(request, span)
                    if isinstance(data, LoaderError):
                        raise data  # failed after it changed something: answered as the error, announced all the same
                    body, headers = await self._success(data, encoding), replies.OK_HEADERS[encoding]
                except Exception as exc:
                    error, body, headers = replies.failure(exc, msg.subject, encoding)
                    span.set_status(trace.StatusCode.ERROR, error.message)
                    span.set_attribute("error.type", error.code)
                replied = True
                await self._reply(msg, body, headers)
                if events:
                    await self._publisher.publish(events, carry=carried(msg.headers))
        except anyio.get_cancelled_exc_class():
            if not replied:
                error, body, headers = replies.failure(Unavailable(STOPPING), msg.subject, encoding)
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._reply(msg, body, headers)
            raise
        finally:
            self._done(endpoint, time.perf_counter_ns() - started, error)

    async def _success(self, data: Any, encoding: codec.Codec) -> bytes:
        """The success reply; a large one (a discover of thousands of extensions), unless it was encoded before,
        is encoded a slice at a time, so cached answers do not wait behind it."""
        if codec.heavy(data):
            return replies.sized(await in_slices(codec.success_steps(data, encoding)), self._nc.max_payload)
        return replies.success(data, encoding, self._nc.max_payload)

    def _done(self, endpoint: Endpoint, elapsed_ns: int, error: LoaderError | None) -> None:
        endpoint.stats.record(elapsed_ns, None if error is None else error.message)
        if self._metrics:
            outcome = "ok" if error is None else error.code
            metrics.requests.add(1, {"messaging.destination.name": endpoint.subject, "outcome": outcome})
        self.active -= 1
        if not self.active and self._idle is not None:
            self._idle.set()

    async def _reply(self, msg: Msg, body: bytes, headers: dict[str, str]) -> None:
        if not msg.reply:
            return
        block = replies.ok_block(headers) if self._frames.usable else None
        try:
            if block is not None:
                await self._frames.reply(msg.reply, block, body)
            else:
                await self._nc.publish(msg.reply, body, headers=headers)
        except Exception as exc:
            log.error("could not reply on %s: %s", msg.subject, exc)
