"""Publishing `extensions.loaded` and `extensions.unloaded`.

Each event carries `Nats-Msg-Id: <event_id>` and the W3C trace headers of the span that caused it, inside a
`send <subject>` PRODUCER span. On core NATS a publish is handed to the client's buffer (which also holds it
through a reconnect). With `[events] jetstream = true` the publisher first checks that the stream is there and
holds exactly the two event subjects, and that no stream captures a request subject (it would answer requests
with its own acks); then it publishes through JetStream and retries until the server acknowledges or the
deadline passes; `Nats-Msg-Id` makes a retried event count once. With `require_stream` and plain publishes
(an account that captures the events through an import, where no acknowledgement comes back) it checks only
that the stream is there. It never creates or changes a stream: `extension-loader setup` does, and a stream
that is missing or wrong stops the start with a message that names it. A publish that fails for good is
logged and counted, never raised into the request that caused it: the reply has already gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from opentelemetry import trace

from ..contract.headers import CONTENT_TYPE, JSON, MSG_ID
from ..contract.messages import Event, ExtensionLoaded
from ..contract.sections import DEFAULT_API_PREFIX
from ..contract.subjects import EVENTS
from .tracing import inject

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

_encoder = msgspec.json.Encoder()


class EventStreamError(Exception):
    """The event stream is missing, wrong, or cannot be asked about; the service does not start without it."""


class StreamConflict(EventStreamError):
    """A JetStream stream captures a request subject; the service refuses to start beside it."""


class EventPublisher:
    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        stream: str | None = None,
        jetstream: bool = False,
        api_prefix: str = DEFAULT_API_PREFIX,
        deadline_s: float = 10.0,
    ) -> None:
        """`stream`: the stream checked at start (None: none); `jetstream`: publish through it, waiting for its
        acknowledgement; `api_prefix`: where its JetStream API is, seen from this connection."""
        if jetstream and stream is None:
            raise ValueError("publishing through JetStream needs the stream's name")
        self._nc = nc
        # Each event's subject, from the contract's table.
        self.subjects: dict[type[Event], str] = {e.event: f"{prefix}.{e.suffix}" for e in EVENTS}  # type: ignore[misc]
        self.loaded_subject = self.subjects[ExtensionLoaded]
        self.stream = stream
        self.jetstream = jetstream
        self.api_prefix = api_prefix
        self.deadline_s = deadline_s
        self._js: JetStreamContext | None = None
        self.published = 0
        self.failed = 0
        self.retries = 0

    def subject(self, event: Event) -> str:
        return self.subjects[type(event)]

    async def setup(self, request_subjects: Sequence[str]) -> None:
        """With a stream name: checks it is there (and, through JetStream, that it holds exactly the event
        subjects and that no stream captures a request subject). Raises EventStreamError."""
        if self.stream is None:
            return
        stream, where = self.stream, self.api_prefix
        js = self._nc.jetstream(prefix=where)
        try:
            if self.jetstream:
                await self._no_stream_over(js, request_subjects)
            await self._check(js, stream)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError) as exc:
            # nats-py reports a server without JetStream as ServiceUnavailableError (its no-responders reply).
            raise EventStreamError(
                f"JetStream did not answer while checking stream {stream!r} ({exc}): is JetStream enabled on the "
                f"server, is events.api_prefix ({where}) right, and may this user use {where}.STREAM.INFO.{stream}?"
            ) from None
        except APIError as exc:
            raise EventStreamError(f"JetStream refused to tell of stream {stream!r}: {exc}") from None
        if self.jetstream:
            self._js = js

    async def _no_stream_over(self, js: JetStreamContext, request_subjects: Sequence[str]) -> None:
        for subject in request_subjects:
            try:
                owner = await js.find_stream_name_by_subject(subject)
            except NotFoundError:
                continue
            raise StreamConflict(
                f"JetStream stream {owner!r} captures the request subject {subject}: it would answer requests "
                "with its own acks. Remove the request subjects from that stream."
            )

    async def _check(self, js: JetStreamContext, stream: str) -> None:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            raise EventStreamError(
                f"JetStream stream {stream!r} (events.stream) is not there: run `extension-loader setup` as admin "
                "to create it (the service never creates streams)"
            ) from None
        held, wanted = sorted(info.config.subjects or []), sorted(self.subjects.values())
        if held == wanted:
            return
        if self.jetstream:
            raise EventStreamError(
                f"JetStream stream {stream!r} holds {', '.join(held) or 'no subject'}, not exactly the event "
                f"subjects {', '.join(wanted)}: run `extension-loader setup` as admin to set them"
            )
        log.warning(  # an import may capture the events under other names: said, not refused
            "JetStream stream %s holds %s, not the event subjects %s", stream, ", ".join(held), ", ".join(wanted)
        )

    async def publish(self, events: Sequence[Event], *, carry: dict[str, str] | None = None) -> None:
        """Publishes in order. `carry`: the request's own trace headers, sent on when no span of this service
        is current (no tracer provider), so a subscriber still joins the caller's trace."""
        for event in events:
            subject = self.subject(event)
            with tracer.start_as_current_span(
                f"send {subject}",
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": subject,
                    "messaging.operation.type": "send",
                    "messaging.message.id": event.event_id,
                },
            ) as span:
                headers = inject({MSG_ID: event.event_id, CONTENT_TYPE: JSON})
                if carry and "traceparent" not in headers:
                    headers.update(carry)
                try:
                    await self._send(subject, _encoder.encode(event), headers)
                except Exception as exc:
                    self.failed += 1
                    span.set_status(trace.StatusCode.ERROR, str(exc))
                    log.error(
                        "could not publish %s event %s: %s",
                        subject,
                        event.event_id,
                        exc,
                        extra={"event_id": event.event_id},
                    )
                else:
                    self.published += 1

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        if self._js is None:
            await self._nc.publish(subject, payload, headers=headers)
            return
        deadline = time.monotonic() + self.deadline_s
        pause = 0.05
        while True:
            try:
                await self._js.publish(subject, payload, timeout=min(2.0, self.deadline_s), headers=headers)
                return
            except Exception as exc:  # no ack yet: a reconnect, a leader election, a full buffer
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                self.retries += 1
                log.warning("no JetStream ack for %s yet (%s); retrying", headers[MSG_ID], exc)
                await anyio.sleep(min(pause, left))
                pause = min(pause * 2, 1.0)
