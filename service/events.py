"""Publishing `extensions.loaded` and `extensions.unloaded`.

Each event carries `Nats-Msg-Id: <event_id>` (so JetStream drops duplicates) and the W3C trace headers of the
span that caused it, inside a `send <subject>` PRODUCER span. A publish that fails is logged and counted,
never raised into the request that caused it: the reply has already gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from opentelemetry import trace

from .codec import JSON
from .messages import ExtensionLoaded, ExtensionUnloaded
from .telemetry import inject

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Event = ExtensionLoaded | ExtensionUnloaded
_encoder = msgspec.json.Encoder()


class EventPublisher:
    def __init__(self, nc: Client, prefix: str) -> None:
        self._nc = nc
        self.loaded_subject = f"{prefix}.loaded"
        self.unloaded_subject = f"{prefix}.unloaded"
        self.published = 0
        self.failed = 0

    def subject(self, event: Event) -> str:
        return self.loaded_subject if isinstance(event, ExtensionLoaded) else self.unloaded_subject

    async def publish(self, events: Sequence[Event]) -> None:
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
                headers = inject({"Nats-Msg-Id": event.event_id, "Content-Type": JSON})
                try:
                    await self._nc.publish(subject, _encoder.encode(event), headers=headers)
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
