"""The service on the wire: where a request enters and its reply leaves.

`ExtensionService` puts the wire's parts together and owns their life: entering it connects
(`connection`), sets up the event publisher (`events`), subscribes every request subject of the subjects table
(`contract/subjects.py`) in the queue group, and their fleet twins (`<prefix>.all.list`, ..., which every
instance answers) outside it, through the `dispatcher` (which calls the `handlers`), the `$SRV` subjects (`micro`) and
the peers' events (`peers`), and returns once the server has them all. With a registry configured it first
reads the registry's index and then follows it (`registry`). Leaving drains the subscriptions (no
request already received is dropped), waits for the requests in flight and their events, answers whatever
the drain time cuts off with `unavailable`, then flushes and closes the connection.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from ..contract.config import Config
from ..contract.messages import EventStats, LoadRequest
from ..core import metrics
from ..core.manager import ExtensionManager
from ..notify import Notifier
from .connection import ConnectRefused, NatsConnection, flush_subscriptions
from .dispatcher import Dispatcher, Endpoint
from .events import EventPublisher
from .follower import RegistryFollower
from .handlers import RequestHandlers
from .micro import EndpointStats, ServiceIdentity, responder
from .peers import PeerListener
from .tracing import Tracing

__all__ = ["ConnectRefused", "ExtensionService", "flush_subscriptions"]

log = logging.getLogger(__name__)


class ExtensionService:
    def __init__(self, config: Config, manager: ExtensionManager, *, version: str) -> None:
        self.config = config
        self.manager = manager
        self.identity = ServiceIdentity(id=manager.instance_id, version=version, started=datetime.now(UTC), metadata={})
        prefix, group = config.nats.subject_prefix, config.nats.queue_group
        self.handlers = RequestHandlers(manager, self._event_stats)
        # Every route of the subjects table: the request subjects in the queue group (one instance answers each
        # request), their fleet twins outside it (every instance answers; "" is no queue group, as $SRV.INFO
        # shows it). Events published through JetStream wait for an acknowledgement, so a subject that may
        # publish them is then answered in a task.
        jetstream = config.events.jetstream
        self.endpoints = [
            Endpoint(
                route.endpoint,
                f"{prefix}.{route.suffix}",
                route.request,
                handler,
                EndpointStats(route.endpoint, f"{prefix}.{route.suffix}", group if route.queue else ""),
                inline=route.subject.inline and not (route.subject.events and jetstream),
                look_up=self.handlers.look_up if route.subject.request is LoadRequest else None,
            )
            for route, handler in self.handlers.routes()
        ]
        self._changed = Notifier()  # whenever reconnects or peer_events grows
        self.connection = NatsConnection(config.nats, on_change=self._changed.notify)
        self.follower: RegistryFollower | None = None
        if manager.releases is not None:
            self.follower = RegistryFollower(
                config.registry,
                manager,
                manager.releases,
                client=lambda: self.nc,
                publisher=lambda: self.publisher,
                connection_changes=lambda: self.connection.reconnects + self.connection.disconnects,
                changed=self._changed,
            )
        self._following: anyio.CancelScope | None = None  # the registry follower's, while it runs
        self.tracing = Tracing()
        self._stack = AsyncExitStack()
        self._tg: TaskGroup | None = None
        self._publisher: EventPublisher | None = None
        self._dispatcher: Dispatcher | None = None
        self._peers = PeerListener(manager, prefix=prefix, on_event=self._changed.notify)
        self._subs: list[Subscription] = []
        self._closed = False
        self._drained = False

    @property
    def subscribed(self) -> bool:
        """Whether requests may have been received: from here on, a stop drains instead of cancelling."""
        return bool(self._subs)

    @property
    def nc(self) -> Client:
        return self.connection.client

    @property
    def publisher(self) -> EventPublisher:
        assert self._publisher is not None, "the service is not started"
        return self._publisher

    @property
    def reconnects(self) -> int:
        return self.connection.reconnects

    @property
    def peer_events(self) -> int:
        return self._peers.handled

    @property
    def ignored_events(self) -> int:
        """Messages on the event subjects that were not events a loader published (`event_filter`)."""
        return self._peers.ignored

    # --- life cycle ---

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            self._closed = True
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _start(self) -> None:
        cfg = self.config
        nc = await self.connection.connect()
        self._stack.push_async_callback(self.connection.close)
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        events = cfg.events
        self._publisher = EventPublisher(
            nc,
            cfg.nats.subject_prefix,
            stream=events.stream if events.jetstream or events.require_stream else None,
            jetstream=events.jetstream,
            api_prefix=events.api_prefix,
            deadline_s=cfg.nats.drain_timeout_s,
        )
        await self._publisher.setup([e.subject for e in self.endpoints])
        if self.follower is not None:
            # The index is read before the first request is taken (or found unreachable, within its bound).
            await self._tg.start(self._follow_registry)
        prefixes = cfg.nats.reply_prefixes
        self._dispatcher = Dispatcher(
            nc, self._tg, publisher=self._publisher, tracing=self.tracing, reply_prefixes=prefixes
        )
        group = cfg.nats.queue_group
        for endpoint in self.endpoints:
            cb = self._dispatcher.callback(endpoint)
            self._subs.append(await nc.subscribe(endpoint.subject, queue=endpoint.stats.queue_group, cb=cb))
        for verb, subject in self.identity.subjects():
            cb = responder(nc, self.identity, verb, lambda: [e.stats for e in self.endpoints], prefixes)
            self._subs.append(await nc.subscribe(subject, cb=cb))
        for subject in self._publisher.subjects.values():
            self._subs.append(await nc.subscribe(subject, cb=self._peers.on_message))
        await flush_subscriptions(nc)  # the server's refusals, if any, arrive before its PONG
        self.connection.check_subscriptions()
        metrics.observe(self.manager)
        log.info(
            "serving %s.* in queue group %s as instance %s",
            cfg.nats.subject_prefix,
            group,
            self.identity.id,
            extra={"servers": nc.connected_url.netloc if nc.connected_url else None},
        )

    async def _follow_registry(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self.follower is not None
        with anyio.CancelScope() as self._following:
            await self.follower.run(task_status=task_status)

    async def drain(self) -> None:
        """Stops taking requests and waits (up to the drain time) for those already received and their events;
        what is still running then is cancelled and answered `unavailable`.

        The caller may still have work of its own that those requests wait on (auto_load's loads): it keeps
        that running until this returns, then stops it, then stops the service."""
        if self._drained:
            return
        self._drained = True
        if self._following is not None:
            self._following.cancel()  # no new work from the registry's index while draining
        with anyio.move_on_after(self.config.nats.drain_timeout_s) as scope:
            for sub in self._subs:
                if not self.nc.is_connected:
                    break  # nothing more can arrive; what did arrive is still answered below
                try:
                    await sub.drain()  # type: ignore[no-untyped-call]
                except Exception as exc:
                    log.debug("drain of %s: %s", sub.subject, exc)
            if self._dispatcher is not None:
                await self._dispatcher.wait_idle()
        if scope.cancelled_caught and self._tg is not None:
            active = self._dispatcher.active if self._dispatcher is not None else 0
            log.warning("%d requests still running after the drain time; answering them 'unavailable'", active)
            self._tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Drains, then closes the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._subs:
                await self.drain()
        finally:
            if self._following is not None:
                self._following.cancel()
            await self._stack.aclose()

    async def wait_until(self, *, reconnects: int = 0, peer_events: int = 0, ignored_events: int = 0) -> None:
        """Returns once at least that many reconnects and peer events have been handled (for tests and tools)."""
        await self._changed.wait_until(
            lambda: (
                self.reconnects >= reconnects
                and self.peer_events >= peer_events
                and self.ignored_events >= ignored_events
            )
        )

    def _event_stats(self) -> EventStats:
        return EventStats(published=self.publisher.published, failed=self.publisher.failed)
