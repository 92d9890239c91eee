"""Trace context over NATS: W3C `traceparent`/`tracestate` in and out, and the request's SERVER span.

Owns how a request's span is started (a child of the caller's context, with the messaging attributes of the
OpenTelemetry conventions) and what it says of the extension. Installing providers and exporters is the
edge's job (`service.app.telemetry`); this module only uses whatever provider is installed, and none at all
costs nothing: `Tracing.enabled` is decided once, so a cached answer does not ask OpenTelemetry each time.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from ..contract.headers import TRACE_HEADERS, header
from ..contract.messages import Extension

tracer = trace.get_tracer("service.wire")


def extract(headers: Mapping[str, str] | None) -> Context:
    """The caller's trace context from `traceparent`/`tracestate`, whatever their letter case."""
    if not headers:
        return Context()
    return propagate.extract({k.lower(): v for k, v in headers.items()})


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Adds the current trace context (`traceparent`, `tracestate`) to outgoing headers."""
    propagate.inject(headers)
    return headers


def carried(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The request's own trace headers, to pass on to the events it causes when no span of ours is current."""
    return {k: v for k in TRACE_HEADERS if (v := header(headers, k)) is not None}


class Tracing:
    def __init__(self) -> None:
        # Decided once: asking OpenTelemetry for its provider reads the environment, on every request otherwise.
        self.enabled = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    def request_span(
        self, subject: str, headers: Mapping[str, str] | None, body_size: int, queue_group: str
    ) -> AbstractContextManager[trace.Span]:
        """The request's SERVER span; none at all without a tracer provider, which saves a good part of a cached
        answer's cost (events still carry the caller's trace headers, passed on as they came). `queue_group`
        is "" for a subject every instance answers (no consumer group)."""
        if not self.enabled:
            return nullcontext(trace.INVALID_SPAN)
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "process",
            "messaging.message.body.size": body_size,
        }
        if queue_group:
            attributes["messaging.consumer.group.name"] = queue_group
        return tracer.start_as_current_span(
            f"process {subject}", context=extract(headers), kind=trace.SpanKind.SERVER, attributes=attributes
        )


def describe(span: trace.Span, request: Any) -> None:
    """The extension a request names, as span attributes."""
    for attr in ("extension_type", "name", "version"):
        value = getattr(request, attr, None)
        if value is not None:
            span.set_attribute(f"extension.{'type' if attr == 'extension_type' else attr}", value)


def describe_outcome(span: trace.Span, extension: Extension, cold: bool) -> None:
    if span.is_recording():
        span.set_attribute("extension.version", extension.metadata.version)
        span.set_attribute("cache.hit", not cold)
