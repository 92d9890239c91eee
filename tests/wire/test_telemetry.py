"""Traces across NATS, metrics, structured logs and audit lines, from a real service on a real nats-server."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from nats.aio.client import Client
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.telemetry import JsonFormatter
from service.wire.service import ExtensionService
from tests.conftest import WAIT, EventLog, service_process

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Recorded:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for point in m.data.data_points
        ]


@pytest.fixture(scope="session")
def installed() -> Recorded:
    """The SDK's own in-memory exporter and reader, installed once: OpenTelemetry allows one provider per
    process. Tests before this one ran with the API's no-op providers."""
    recorded = Recorded()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded.spans))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[recorded.metrics]))
    return recorded


@pytest.fixture
def recorded(installed: Recorded) -> Recorded:
    installed.spans.clear()
    return installed


async def test_request_span_joins_the_callers_trace(
    recorded: Recorded, nc: Client, service: ExtensionService, events: EventLog
) -> None:
    body = b'{"extension_type": "taskserv", "name": "etcd"}'
    reply = await nc.request("extensions.load", body, timeout=WAIT, headers={"traceparent": TRACEPARENT})
    assert json.loads(reply.data)["success"] is True
    await events.wait_for(1, ".loaded")

    (process,) = recorded.finished("process extensions.load")
    assert f"{process.context.trace_id:032x}" == TRACE_ID
    assert process.parent is not None and f"{process.parent.span_id:016x}" == PARENT_ID
    assert process.kind is trace.SpanKind.SERVER
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.destination.name"] == "extensions.load"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.consumer.group.name"] == "extension-loader"
    assert (attrs["extension.type"], attrs["extension.name"], attrs["extension.version"]) == (
        "taskserv",
        "etcd",
        "3.5.12",
    )
    assert attrs["cache.hit"] is False

    (run,) = recorded.finished("nushell module load")
    (send,) = recorded.finished("send extensions.loaded")
    for child in (run, send):
        assert child.parent is not None and child.parent.span_id == process.context.span_id
    assert send.kind is trace.SpanKind.PRODUCER

    msg = events.messages[0]
    assert msg.headers is not None
    _, trace_id, span_id, _ = msg.headers["traceparent"].split("-")
    assert (trace_id, span_id) == (TRACE_ID, f"{send.context.span_id:016x}")

    await nc.request("extensions.load", body, timeout=WAIT, headers={"traceparent": TRACEPARENT})
    hit = recorded.finished("process extensions.load")[-1]
    hit_attrs = dict(hit.attributes or {})
    assert hit_attrs["cache.hit"] is True and hit_attrs["extension.version"] == "3.5.12"
    assert hit.parent is not None and f"{hit.parent.span_id:016x}" == PARENT_ID


async def test_errors_set_status_and_error_type(recorded: Recorded, nc: Client, service: ExtensionService) -> None:
    await nc.request("extensions.load", b'{"extension_type": "taskserv", "name": "nope"}', timeout=WAIT)
    await nc.request("extensions.status", b"garbage", timeout=WAIT)
    load, status = recorded.finished("process extensions.load")[-1], recorded.finished("process extensions.status")[-1]
    assert load.status.status_code is trace.StatusCode.ERROR
    assert dict(load.attributes or {})["error.type"] == "not_found"
    assert dict(status.attributes or {})["error.type"] == "invalid_request"


async def test_metrics_agree_with_stats(recorded: Recorded, client: LoaderClient, service: ExtensionService) -> None:
    await client.load("taskserv", "redis")
    await client.load("taskserv", "redis")
    stats = await client.stats()
    me = {"service.instance.id": service.identity.id}

    def value(name: str) -> Any:
        (point,) = [p for p in recorded.metric_points(name) if dict(p.attributes) == me]
        return point.value

    assert value("extension_loader.cache.hits") == stats["cache"]["hits"] == 1
    assert value("extension_loader.cache.misses") == stats["cache"]["misses"] == 1
    assert value("extension_loader.cache.size") == stats["cache"]["size"] == 1
    assert value("extension_loader.loads.in_flight") == 0
    durations = [p for p in recorded.metric_points("extension_loader.load.duration") if p.count]
    assert durations and all(p.sum > 0 for p in durations)
    loads = [
        p
        for p in recorded.metric_points("extension_loader.requests")
        if dict(p.attributes) == {"messaging.destination.name": "extensions.load", "outcome": "ok"}
    ]
    assert loads and loads[0].value >= 2


async def test_audit_lines_name_who_asked(
    recorded: Recorded, nc: Client, service: ExtensionService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    headers = {"Requester": "orchestrator-7", "traceparent": TRACEPARENT}
    await nc.request(
        "extensions.load", b'{"extension_type": "provider", "name": "local"}', timeout=WAIT, headers=headers
    )
    await nc.request("extensions.cache.clear", b"", timeout=WAIT)
    lines = [r for r in caplog.records if r.name == "service.audit"]
    load, clear = lines
    assert (load.action, load.extension, load.outcome, load.requester) == (  # type: ignore[attr-defined]
        "load",
        "provider:local:1.0.0",
        "ok",
        "orchestrator-7",
    )
    assert clear.action == "cleared" and clear.requester == "nats:extensions.cache.clear"  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(load))
    assert line["requester"] == "orchestrator-7" and line["action"] == "load"


def test_json_log_lines_carry_trace_ids(installed: Recorded) -> None:
    tracer = trace.get_tracer("test")
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello there" and line["level"] == "info"
    assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert line["span_id"] == f"{span.get_span_context().span_id:016x}"


@pytest.fixture
def console_service(nats_server: NatsServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "loader-under-test"}
    with service_process(nats_server.url, tmp_path, env=env, stdout=subprocess.PIPE) as proc:
        yield proc


async def test_console_exporter_prints_standard_json_spans(
    console_service: subprocess.Popen[bytes], nc: Client
) -> None:
    body = b'{"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"}'
    reply = await nc.request("extensions.load", body, timeout=WAIT, headers={"traceparent": TRACEPARENT})
    assert json.loads(reply.data)["success"] is True
    console_service.send_signal(signal.SIGTERM)
    assert console_service.stdout is not None
    out = (await anyio.to_thread.run_sync(console_service.stdout.read)).decode()
    assert await anyio.to_thread.run_sync(console_service.wait, WAIT) == 0
    spans = []
    decoder = json.JSONDecoder()
    position = 0
    while position < len(out):
        if out[position].isspace():
            position += 1
            continue
        span, position = decoder.raw_decode(out, position)
        spans.append(span)
    by_name = {s["name"]: s for s in spans}
    process = by_name["process extensions.load"]
    assert process["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert process["parent_id"] == f"0x{PARENT_ID}"
    assert process["kind"] == "SpanKind.SERVER"
    assert process["resource"]["attributes"]["service.name"] == "loader-under-test"
    assert by_name["nushell module load"]["parent_id"] == process["context"]["span_id"]
    assert by_name["send extensions.loaded"]["parent_id"] == process["context"]["span_id"]


def exporter_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(
    exporter_installed("opentelemetry.exporter.otlp.proto.grpc"), reason="the otlp-grpc extra is installed here"
)
async def test_otlp_over_grpc_without_its_extra_names_the_extra(nats_server: NatsServer, tmp_path: Path) -> None:
    """`make install` installs neither OTLP exporter; asked for gRPC, the service says which extra to install
    (not the `otlp` extra, which is HTTP only) and serves on without the exporter."""
    lines: list[str] = []
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with service_process(nats_server.url, tmp_path, env=env, lines=lines):
        pass
    assert any("pip install 'extension-loader[otlp-grpc]'" in line for line in lines), lines
