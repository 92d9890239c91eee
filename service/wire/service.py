"""The NATS wiring: where a request enters and its reply leaves.

`ExtensionService` owns the NATS connection and the task group. Entering it connects, subscribes every
request subject in the queue group and the `$SRV` subjects, and returns once they are live. A request that
can wait (a cold load, a reload, a scan) is handled in its own task, so it never holds up a cached answer,
which is given in the subscription's callback. `_handle`, and the cached answer's short path beside it, are
the boundaries where any exception becomes an error reply. Leaving drains the subscriptions (no request already
received is dropped), waits for the handlers in flight and their events, then drains the connection.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread
import msgspec
import nats
import nats.errors
from anyio.abc import TaskGroup
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import metrics as metrics_api
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider

from ..app.telemetry import extract
from ..contract.config import Config
from ..contract.errors import LoaderError, LoadFailed
from ..contract.messages import (
    Cleared,
    DiscoverRequest,
    EmptyRequest,
    EventStats,
    Extension,
    ExtensionType,
    GraphRequest,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)
from ..core import audit, metrics
from ..core.graph import render
from ..core.manager import ExtensionManager
from . import codec
from .events import Event, EventPublisher
from .micro import EndpointStats, ServiceIdentity

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Handler = Callable[[Any, trace.Span], Awaitable[tuple[Any, list[Event]]]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    subject: str
    request: type[Any]
    handler: Handler
    stats: EndpointStats
    inline: bool = False  # answered in the subscription's callback: never waits on anything


class ExtensionService:
    def __init__(self, config: Config, manager: ExtensionManager, *, version: str) -> None:
        self.config = config
        self.manager = manager
        self.identity = ServiceIdentity(id=manager.instance_id, version=version, started=datetime.now(UTC), metadata={})
        prefix = config.nats.subject_prefix
        group = config.nats.queue_group
        routes: list[tuple[str, str, type[Any], Handler]] = [
            ("load", "load", LoadRequest, self._load),
            ("reload", "reload", ReloadRequest, self._reload),
            ("list", "list", ListRequest, self._list),
            ("status", "status", StatusRequest, self._status),
            ("discover", "discover", DiscoverRequest, self._discover),
            ("cache_clear", "cache.clear", EmptyRequest, self._clear),
            ("stats", "stats", EmptyRequest, self._stats),
            ("graph", "graph", GraphRequest, self._graph),
        ]
        inline = {ListRequest} | ({EmptyRequest} if not config.events.jetstream else set())
        self.endpoints = [
            Endpoint(
                name,
                f"{prefix}.{suffix}",
                kind,
                handler,
                EndpointStats(name, f"{prefix}.{suffix}", group),
                inline=kind in inline,
            )
            for name, suffix, kind, handler in routes
        ]
        self._stack = AsyncExitStack()
        self._nc: Client | None = None
        self._tg: TaskGroup | None = None
        self._publisher: EventPublisher | None = None
        self._subs: list[Subscription] = []
        self._active = 0
        self._idle: anyio.Event | None = None  # made only while stop() waits (one a request cost 5% of a cached answer)
        self._closed = False
        self._drained = False
        self._sub_refusals: list[str] | None = []  # subscriptions refused while starting; None once started
        # Decided once: asking OpenTelemetry for its provider reads the environment, on every request otherwise.
        self._tracing = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        self._metrics = isinstance(metrics_api.get_meter_provider(), MeterProvider)
        self.reconnects = 0
        self.peer_events = 0
        self._changed = anyio.Event()  # set (and replaced) whenever reconnects or peer_events grows

    @property
    def subscribed(self) -> bool:
        """Whether requests may have been received: from here on, a stop drains instead of cancelling."""
        return bool(self._subs)

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "the service is not started"
        return self._nc

    @property
    def publisher(self) -> EventPublisher:
        assert self._publisher is not None, "the service is not started"
        return self._publisher

    # --- life cycle ---

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            self._closed = True  # closing, not a lost connection, for the disconnected callback
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _start(self) -> None:
        self._nc = await self._connect()
        self._stack.push_async_callback(self._close_connection)
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._publisher = EventPublisher(
            self._nc,
            self.config.nats.subject_prefix,
            stream=self.config.events.stream if self.config.events.jetstream else None,
            deadline_s=self.config.nats.drain_timeout_s,
        )
        await self._publisher.setup([e.subject for e in self.endpoints])
        group = self.config.nats.queue_group
        for endpoint in self.endpoints:
            self._subs.append(await self.nc.subscribe(endpoint.subject, queue=group, cb=self._dispatcher(endpoint)))
        for verb, subject in self.identity.subjects():
            self._subs.append(await self.nc.subscribe(subject, cb=self._srv_handler(verb)))
        # Every instance hears every other one's events (no queue group), to forget what a peer reloaded.
        for subject in (self.publisher.loaded_subject, self.publisher.unloaded_subject):
            self._subs.append(await self.nc.subscribe(subject, cb=self._on_peer_event))
        await flush_subscriptions(self.nc)  # the server's refusals, if any, arrive before its PONG
        refusals, self._sub_refusals = self._sub_refusals or [], None
        if refusals:
            cfg = self.config.nats
            who = (
                f"user {cfg.user!r}"
                if cfg.user
                else "the configured token or credentials"
                if cfg.token or cfg.creds
                else "a client without a user name"
            )
            raise ConnectRefused(
                f"NATS at {self.config.nats.url} lets {who} in but refuses {len(refusals)} of the "
                f"service's subscriptions ({refusals[0]}): the service needs the permissions of the "
                "loader user in nats.conf (README.md, Security)"
            )
        metrics.observe(self.manager)
        log.info(
            "serving %s.* in queue group %s as instance %s",
            self.config.nats.subject_prefix,
            group,
            self.identity.id,
            extra={"servers": self.nc.connected_url.netloc if self.nc.connected_url else None},
        )

    async def drain(self) -> None:
        """Stops taking requests and waits (up to the drain time) for those already received and their events.

        The caller may still have work of its own that those requests wait on (auto_load's loads): it keeps
        that running until this returns, then stops it, then stops the service."""
        if self._drained:
            return
        self._drained = True
        with anyio.move_on_after(self.config.nats.drain_timeout_s) as scope:
            for sub in self._subs:
                if self._nc is None or not self._nc.is_connected:
                    break  # nothing more can arrive; what did arrive is still answered below
                try:
                    await sub.drain()  # type: ignore[no-untyped-call]
                except Exception as exc:
                    log.debug("drain of %s: %s", sub.subject, exc)
            while self._active:
                self._idle = anyio.Event()
                await self._idle.wait()
        if scope.cancelled_caught and self._tg is not None:
            log.warning("%d requests still running after the drain time; cancelling them", self._active)
            self._tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Drains, then closes the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.drain()
        finally:
            await self._stack.aclose()

    async def _close_connection(self) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        with anyio.CancelScope(shield=True):
            try:
                if self._nc.is_connected:
                    await self._nc.flush(timeout=2)
            except Exception as exc:
                log.warning("could not flush to NATS on stop: %s", exc)
            try:
                await self._nc.close()
            except Exception as exc:
                log.warning("closing the NATS connection: %s", exc)

    def _connect_options(self) -> dict[str, Any]:
        cfg = self.config.nats
        return {
            **cfg.credentials(),
            "name": cfg.name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 5,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }

    async def _connect(self) -> Client:
        """Connects, trying again while no server answers; refused credentials or a certificate that does not
        verify end the start at once (nats-py would otherwise retry them for ever)."""
        nc = Client()
        refused: list[Exception] = []
        settled = anyio.Event()

        async def on_error(exc: Exception) -> None:
            if not nc.is_connected and _is_refusal(exc):
                refused.append(exc)
                settled.set()
            await self._on_error(exc)

        async def attempt() -> None:
            await nc.connect(**self._connect_options(), error_cb=on_error)
            settled.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(attempt)
                await settled.wait()
                tg.cancel_scope.cancel()
        except BaseException:  # cancelled while waiting for a server: leave nothing of the attempt running
            self._closed = True  # closing, not a lost connection, for the disconnected callback
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await nc.close()
            raise
        if refused:
            with anyio.CancelScope(shield=True):
                try:
                    await nc.close()
                except Exception as exc:
                    log.debug("closing a refused connection: %s", exc)
            raise ConnectRefused(f"NATS at {self.config.nats.url} refused the connection: {refused[0]}")
        return nc

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)
        if self._sub_refusals is not None and "permissions violation for subscription" in str(exc).lower():
            self._sub_refusals.append(str(exc).removeprefix("nats: "))

    async def _on_disconnected(self) -> None:
        if self._closed:
            log.info("disconnected from NATS")
        else:
            log.warning("disconnected from NATS; reconnecting (events are buffered meanwhile)")

    async def _on_reconnected(self) -> None:
        url = self.nc.connected_url
        log.info("reconnected to NATS at %s", url.netloc if url else "?")
        self.reconnects += 1
        self._notify()

    async def wait_until(self, *, reconnects: int = 0, peer_events: int = 0) -> None:
        """Returns once at least that many reconnects and peer events have been handled (for tests and tools)."""
        while self.reconnects < reconnects or self.peer_events < peer_events:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _on_peer_event(self, msg: Msg) -> None:
        """Forgets what another instance reloaded, cleared or saw removed, so no one serves stale metadata."""
        try:
            event = _peer_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("ignored an unreadable event on %s: %s", msg.subject, exc)
            return
        target = event.target()
        if event.instance_id == self.identity.id or target is None:
            return
        dropped = self.manager.forget_for_peer(msg.subject == self.publisher.loaded_subject, event.reason, *target)
        self.peer_events += 1
        self._notify()
        if dropped:
            log.info(
                "dropped %d cache entries after %s from instance %s",
                len(dropped),
                msg.subject,
                event.instance_id,
                extra={"dropped": dropped},
            )

    # --- requests ---

    def _dispatcher(self, endpoint: Endpoint) -> Callable[[Msg], Awaitable[None]]:
        async def dispatch(msg: Msg) -> None:
            # nats-py awaits this callback before it hands over the next message. What can wait (a cold load,
            # a reload, a scan of the disk) gets a task of its own; an answer that is ready now (a cache hit,
            # list, stats) is given here, which costs a fraction of starting a task.
            assert self._tg is not None
            started = time.perf_counter_ns()
            fmt = codec.Codec.of(msg.headers)
            self._active += 1
            hit = self._cached(msg, fmt) if endpoint.request is LoadRequest else None
            if hit is not None and not self._tracing:
                # The answer orchestrators ask for most, at the least cost: no task, no span (tracing is off),
                # no audit (nothing changes), a reply encoded once per cache entry.
                error: LoaderError | None = None
                try:
                    body, headers = self._success(hit, fmt), _OK_HEADERS[fmt]
                except Exception as exc:
                    error, body, headers = _failure(exc, msg.subject, fmt)
                try:
                    await self._reply(msg, body, headers)
                finally:
                    self._done(endpoint, time.perf_counter_ns() - started, error)
            elif hit is not None:
                await self._handle(endpoint, msg, fmt, hit)
            elif endpoint.inline:
                await self._handle(endpoint, msg, fmt)
            else:
                self._tg.start_soon(self._handle, endpoint, msg, fmt)

        return dispatch

    def _cached(self, msg: Msg, fmt: codec.Codec) -> Extension | None:
        """The extension, counted as a cache hit, when the request is a load the cache answers as it stands."""
        try:
            req = codec.decode(msg.data, LoadRequest, fmt)
        except LoaderError:
            return None
        if req.with_dependencies:
            return None
        try:
            return self.manager.hit(req.type, req.name, req.version)
        except Exception:
            # A defect, not a hit: the general path runs the load and answers with the error if it recurs.
            log.exception("looking up %s %s in the cache failed", req.type, req.name)
            return None

    def _success(self, data: Any, fmt: codec.Codec) -> bytes:
        """The success envelope; LoadFailed when it is larger than the server would take."""
        body = codec.success(data, fmt)
        if len(body) > self.nc.max_payload:
            raise LoadFailed(
                f"the reply ({len(body)} bytes) is larger than the NATS server's max_payload "
                f"({self.nc.max_payload} bytes); narrow the request"
            )
        return body

    async def _handle(self, endpoint: Endpoint, msg: Msg, fmt: codec.Codec, hit: Extension | None = None) -> None:
        """Answers one request; `hit` is the extension a cached load answers with, found (and counted) already."""
        started = time.perf_counter_ns()
        error: LoaderError | None = None
        events: list[Event] = []
        audit.handling(msg.headers, msg.subject)
        try:
            with self._span(msg) as span:
                try:
                    request = codec.decode(msg.data, endpoint.request, fmt)
                    if span.is_recording():
                        _describe(span, request)
                    if hit is None:
                        data, events = await endpoint.handler(request, span)
                    else:
                        data = hit
                        _describe_outcome(span, hit, cold=False)
                    body, headers = self._success(data, fmt), _OK_HEADERS[fmt]
                except Exception as exc:
                    error, body, headers = _failure(exc, msg.subject, fmt)
                    span.set_status(trace.StatusCode.ERROR, error.message)
                    span.set_attribute("error.type", error.code)
                await self._reply(msg, body, headers)
                if events:
                    await self.publisher.publish(events, carry=_trace_headers(msg.headers))
        finally:
            self._done(endpoint, time.perf_counter_ns() - started, error)

    def _done(self, endpoint: Endpoint, elapsed_ns: int, error: LoaderError | None) -> None:
        endpoint.stats.record(elapsed_ns, None if error is None else error.message)
        if self._metrics:
            outcome = "ok" if error is None else error.code
            metrics.requests.add(1, {"messaging.destination.name": endpoint.subject, "outcome": outcome})
        self._active -= 1
        if not self._active and self._idle is not None:
            self._idle.set()

    def _span(self, msg: Msg) -> AbstractContextManager[trace.Span]:
        """The request's SERVER span, child of the caller's trace context; none at all when no tracer provider
        is installed, which saves a good part of a cached answer's cost (events still carry the caller's trace
        headers, passed on as they came)."""
        if not self._tracing:
            return nullcontext(trace.INVALID_SPAN)
        return tracer.start_as_current_span(
            f"process {msg.subject}",
            context=extract(msg.headers),
            kind=trace.SpanKind.SERVER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": self.config.nats.queue_group,
                "messaging.message.body.size": len(msg.data),
            },
        )

    async def _reply(self, msg: Msg, body: bytes, headers: dict[str, str]) -> None:
        if not msg.reply:
            return
        try:
            await self.nc.publish(msg.reply, body, headers=headers)
        except Exception as exc:
            log.error("could not reply on %s: %s", msg.subject, exc)

    def _srv_handler(self, verb: str) -> Callable[[Msg], Awaitable[None]]:
        async def answer(msg: Msg) -> None:
            if not msg.reply:
                return
            reply = self.identity.reply(verb, [e.stats for e in self.endpoints])
            try:
                await self.nc.publish(msg.reply, msgspec.json.encode(reply), headers={"Content-Type": codec.JSON})
            except Exception as exc:
                log.error("could not answer $SRV.%s: %s", verb, exc)

        return answer

    # --- one handler per subject ---

    async def _load(self, req: LoadRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        outcome = await self.manager.load(req.type, req.name, req.version, with_dependencies=req.with_dependencies)
        _describe_outcome(span, outcome.extension, outcome.cold)
        return outcome.extension, outcome.events

    async def _reload(self, req: ReloadRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        outcome = await self.manager.reload(req.type, req.name, req.version)
        _describe_outcome(span, outcome.extension, cold=True)
        return outcome.extension, outcome.events

    async def _list(self, req: ListRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        return self.manager.loaded(req.type), []

    async def _status(self, req: StatusRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        return self.manager.status(req.type, req.name, req.version), []

    async def _discover(self, req: DiscoverRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        # A scan of a large tree reads the disk: off the event loop, so cached answers do not wait for it.
        return await anyio.to_thread.run_sync(self.manager.discover, req.type, req.name), []

    async def _clear(self, req: EmptyRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        count, events = self.manager.clear()
        return Cleared(cleared=count), events

    async def _stats(self, req: EmptyRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        events = EventStats(published=self.publisher.published, failed=self.publisher.failed)
        return msgspec.structs.replace(self.manager.stats(), events=events), []

    async def _graph(self, req: GraphRequest, span: trace.Span) -> tuple[Any, list[Event]]:
        tree = self.manager.dependency_tree(req.type, req.name, req.version)
        span.set_attribute("extension.version", tree.root.version)
        return render(tree, req.format), []


class ConnectRefused(Exception):
    """NATS refused the service's credentials, its certificate or its subscriptions; trying again would not
    help."""


def _is_refusal(exc: Exception) -> bool:
    return (
        isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError) or "authorization violation" in str(exc).lower()
    )


class PeerEvent(msgspec.Struct, frozen=True):
    """What an instance reads of another one's `loaded` and `unloaded` events."""

    instance_id: str
    reason: str
    extension_type: ExtensionType | None = None  # unloaded events
    name: str | None = None
    version: str | None = None
    extension: Extension | None = None  # loaded events

    def target(self) -> tuple[ExtensionType, str, str] | None:
        if self.extension is not None:
            m = self.extension.metadata
            return m.extension_type, m.name, m.version
        if self.extension_type is not None and self.name is not None and self.version is not None:
            return self.extension_type, self.name, self.version
        return None


_peer_decoder = msgspec.json.Decoder(PeerEvent)


async def flush_subscriptions(nc: Client) -> None:
    """Returns once the server has every subscription made so far.

    nats-py 2.16 writes a flush's PING straight to the socket, ahead of SUB commands still queued for its
    flusher task, so one PONG does not prove the SUBs arrived. The first round trip lets the flusher write
    them; the second PING travels behind them.
    """
    await nc.flush()
    await nc.flush()


def _trace_headers(headers: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k in ("traceparent", "tracestate") if (v := codec.header(headers, k)) is not None}


def _describe(span: trace.Span, request: Any) -> None:
    for attr in ("extension_type", "name", "version"):
        value = getattr(request, attr, None)
        if value is not None:
            span.set_attribute(f"extension.{'type' if attr == 'extension_type' else attr}", value)


def _describe_outcome(span: trace.Span, extension: Extension, cold: bool) -> None:
    if span.is_recording():
        span.set_attribute("extension.version", extension.metadata.version)
        span.set_attribute("cache.hit", not cold)


_OK_HEADERS = {fmt: {"Content-Type": fmt.value} for fmt in codec.Codec}


def _failure(exc: Exception, subject: str, fmt: codec.Codec) -> tuple[LoaderError, bytes, dict[str, str]]:
    """The error a request failed with (an unexpected exception becomes an internal error, logged with its
    traceback, which never reaches the client), its failure envelope and its headers."""
    if isinstance(exc, LoaderError):
        err = exc
    else:
        log.exception("unexpected error while handling %s", subject)
        err = LoadFailed(f"internal error ({type(exc).__name__}); see the service log")
    headers = {
        "Content-Type": fmt.value,
        "Nats-Service-Error": _header_safe(err.message),
        "Nats-Service-Error-Code": str(err.status),
    }
    return err, codec.failure(err, fmt), headers


def _header_safe(text: str) -> str:
    # A header value is one line of printable text.
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:512]
