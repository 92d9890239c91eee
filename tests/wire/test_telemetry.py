"""Traces across NATS, metrics, structured logs and audit lines, from a real service on a real nats-server."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from nats.aio.client import Client
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.telemetry import JsonFormatter
from service.contract.config import Config
from service.wire.service import ExtensionService
from tests.conftest import WAIT, EventLog, running_service, service_process

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


RECORDED: list[Recorded] = []  # every set of providers a test here installed, to show none records later


def reset_global_providers() -> None:
    """Forgets the global tracer and meter providers, as OpenTelemetry's own tests do between tests: it lets a
    process set them once (`_TRACER_PROVIDER_SET_ONCE`, `_METER_PROVIDER_SET_ONCE`). The proxies the service's
    modules took at import (`tracer = trace.get_tracer(__name__)`, the instruments of `service.core.metrics`) keep
    the real tracer or instrument they were first given, so they are reset too, back to the API's no-op."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    for module in list(sys.modules.values()):
        if module.__name__ == "service" or module.__name__.startswith("service."):
            for value in vars(module).values():
                if isinstance(value, trace.ProxyTracer):
                    value._real_tracer = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    proxy = metrics_internal._PROXY_METER_PROVIDER
    proxy._real_meter_provider = None
    for meter in proxy._meters:
        meter._real_meter = None
        for instrument in meter._instruments:
            instrument._real_instrument = None


@contextmanager
def installed_providers() -> Iterator[Recorded]:
    """The SDK's own in-memory exporter and reader, installed as the global providers (as the service's
    set-up installs its own) for as long as this lasts, then removed: the tests after these run without.
    They are not shut down (nothing is buffered), so a span made through a provider left behind still shows."""
    recorded = Recorded()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(recorded.spans))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[recorded.metrics], shutdown_on_exit=False))
    RECORDED.append(recorded)
    try:
        yield recorded
    finally:
        reset_global_providers()


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    """Providers of the test's own; request it before the service, which looks for a tracer provider as it
    is made."""
    with installed_providers() as recorded:
        yield recorded


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
    assert [p.value for p in loads] == [2]


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


def test_json_log_lines_carry_trace_ids(recorded: Recorded) -> None:
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


async def test_after_the_tests_above_the_service_runs_without_tracing(
    nc: Client, config: Config, events: EventLog
) -> None:
    """Last in this module, so it runs after every test above (pytest keeps a module's order), and it installs
    and removes providers once more itself: afterwards no provider is left, the service makes no span (the
    event carries the caller's `traceparent` as it came, not one of a span of its own) and no provider
    installed before records anything. A provider left behind would trace every test that comes later."""
    with installed_providers() as earlier:
        async with running_service(config):
            await nc.request("extensions.load", b'{"extension_type": "taskserv", "name": "etcd"}', timeout=WAIT)
        assert earlier.finished("nushell module load") and earlier.finished("send extensions.loaded")
    await events.wait_for(1, ".loaded")
    spans_before = [len(r.spans.get_finished_spans()) for r in RECORDED]

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    async with running_service(config):
        body = b'{"extension_type": "taskserv", "name": "redis"}'
        for _ in range(2):  # cold, then from the cache
            reply = await nc.request("extensions.load", body, timeout=WAIT, headers={"traceparent": TRACEPARENT})
            assert json.loads(reply.data)["success"] is True
    (_, event) = await events.wait_for(2, ".loaded")
    assert event["extension"]["metadata"]["name"] == "redis"
    msg = [m for m in events.messages if m.subject.endswith(".loaded")][1]
    assert msg.headers is not None and msg.headers["traceparent"] == TRACEPARENT
    assert [len(r.spans.get_finished_spans()) for r in RECORDED] == spans_before
