"""Tracing, metrics and logging set-up: which providers and exporters this process installs.

Tracing follows OpenTelemetry's own environment variables: `OTEL_TRACES_EXPORTER` = `otlp` (needs the
`otlp` extra, or `otlp-grpc` with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`), `console` (the SDK's JSON spans on
standard output) or `none` (the default here, so a developer's `make run` does not try to reach a collector
that is not there); `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT` and the rest are read by the SDK
itself. Logs are one JSON object a line when standard error is not a terminal, readable lines when it is,
each with the trace and span ids.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

log = logging.getLogger(__name__)

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class Telemetry:
    """The providers set up at start; `shutdown()` flushes what is still buffered."""

    def __init__(self, tracer: TracerProvider | None, meter: MeterProvider | None) -> None:
        self.tracer = tracer
        self.meter = meter

    def shutdown(self) -> None:
        if self.tracer is not None:
            self.tracer.shutdown()
        if self.meter is not None:
            self.meter.shutdown()


def setup_telemetry(environ: Mapping[str, str], *, version: str) -> Telemetry:
    """Installs tracer and meter providers as OTEL_TRACES_EXPORTER and OTEL_METRICS_EXPORTER say."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Telemetry(None, None)
    resource = Resource.create(
        {"service.name": environ.get("OTEL_SERVICE_NAME", "extension-loader"), "service.version": version}
    )
    return Telemetry(_tracing(environ, resource), _metrics(environ, resource))


def _exporters(environ: Mapping[str, str], variable: str) -> list[str]:
    names = [e.strip() for e in environ.get(variable, "none").split(",") if e.strip() and e.strip() != "none"]
    for name in names:
        if name not in ("console", "otlp"):
            log.warning("unknown %s value %r ignored", variable, name)
    return [n for n in names if n in ("console", "otlp")]


def _metrics(environ: Mapping[str, str], resource: Resource) -> MeterProvider | None:
    readers: list[MetricReader] = []
    for name in _exporters(environ, "OTEL_METRICS_EXPORTER"):
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stdout)))
            continue
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        except ImportError:
            log.warning("OTEL_METRICS_EXPORTER=otlp needs the otlp extra: pip install 'extension-loader[otlp]'")
            continue
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if not readers:
        return None
    provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(provider)
    return provider


def _tracing(environ: Mapping[str, str], resource: Resource) -> TracerProvider | None:
    exporters = _exporters(environ, "OTEL_TRACES_EXPORTER")
    if not exporters:
        return None
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        elif name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
            extra = "otlp-grpc" if protocol == "grpc" else "otlp"
            try:
                if protocol == "grpc":
                    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
                else:
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning(
                    "OTEL_TRACES_EXPORTER=otlp (protocol %s) needs the %s extra: pip install 'extension-loader[%s]'",
                    protocol or "http/protobuf",
                    extra,
                    extra,
                )
                continue
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        _add_trace(out)
        out.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        ids: dict[str, Any] = {}
        _add_trace(ids)
        tail = " ".join(f"{k}={v}" for k, v in {**extra, **ids}.items())
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if tail:
            line = f"{line}  [{tail}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _add_trace(out: dict[str, Any]) -> None:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        out["trace_id"] = f"{ctx.trace_id:032x}"
        out["span_id"] = f"{ctx.span_id:016x}"


def setup_logging(level: str = "INFO", *, json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
