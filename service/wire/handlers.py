"""The request handlers: one plain method per subject, from a decoded request to the reply's data and the
events to publish once the reply has gone. The fleet subjects (`<prefix>.all.list`, ...) reuse them: every
instance answers with its own reply, under its instance id.

They know nothing of NATS (no message, no connection, no headers): the dispatcher decodes, calls, encodes and
replies. What they may touch is the manager and the span they are given; errors are raised as the contract's
`LoaderError`s and turned into replies by the dispatcher.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from opentelemetry import trace

from ..contract.errors import LoaderError
from ..contract.messages import (
    Cleared,
    DiscoverRequest,
    EmptyRequest,
    EventStats,
    GraphRequest,
    InstanceReply,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)
from ..contract.subjects import REQUESTS, ROUTES, Route
from ..core.graph import render
from ..core.manager import Event, ExtensionManager
from .tracing import describe_outcome

Reply = tuple[Any, list[Event]]


class FailedAfterEvents(Exception):
    """A request that failed after it had changed something: the error to answer with, and the events of what
    did change (dependencies loaded before another one failed), to publish after the error reply."""

    def __init__(self, error: LoaderError, events: list[Event]) -> None:
        super().__init__(error.message)
        self.error = error
        self.events = events


Handler = Callable[[Any, trace.Span], Awaitable[Reply]]


class RequestHandlers:
    def __init__(self, manager: ExtensionManager, event_stats: Callable[[], EventStats]) -> None:
        self.manager = manager
        self._event_stats = event_stats

    def routes(self) -> list[tuple[Route, Handler]]:
        """Every route of the subjects table (service/contract/subjects.py) with its handler. A fleet twin's
        (`all.list`, ...) is the single subject's handler, its data wrapped in an `InstanceReply`."""
        handlers = self._by_subject()
        missing = [subject.suffix for subject in REQUESTS if subject.suffix not in handlers]
        extra = sorted(handlers.keys() - {subject.suffix for subject in REQUESTS})
        if missing or extra:
            raise RuntimeError(
                f"the subjects table and the handlers differ: no handler for {missing}, no subject for {extra}"
            )
        routes = []
        for route in ROUTES:
            handler = handlers[route.subject.suffix]
            routes.append((route, self._of_this_instance(handler) if route.twin else handler))
        return routes

    def _by_subject(self) -> dict[str, Handler]:
        """The handler of each request subject, by the subject's suffix."""
        return {
            "load": self.load,
            "reload": self.reload,
            "list": self.list,
            "status": self.status,
            "discover": self.discover,
            "cache.clear": self.clear,
            "stats": self.stats,
            "graph": self.graph,
        }

    def _of_this_instance(self, handler: Handler) -> Handler:
        async def answer(req: Any, span: trace.Span) -> Reply:
            data, events = await handler(req, span)
            return InstanceReply(instance_id=self.manager.instance_id, data=data), events

        return answer

    async def load(self, req: LoadRequest, span: trace.Span) -> Reply:
        loaded: list[Event] = []
        try:
            outcome = await self.manager.load(
                req.type, req.name, req.version, with_dependencies=req.with_dependencies, failed_events=loaded
            )
        except LoaderError as exc:
            if loaded:
                raise FailedAfterEvents(exc, loaded) from exc
            raise
        describe_outcome(span, outcome.extension, outcome.cold)
        return outcome.extension, outcome.events

    async def reload(self, req: ReloadRequest, span: trace.Span) -> Reply:
        outcome = await self.manager.reload(req.type, req.name, req.version)
        describe_outcome(span, outcome.extension, cold=True)
        return outcome.extension, outcome.events

    async def list(self, req: ListRequest, span: trace.Span) -> Reply:
        return self.manager.loaded(req.type), []

    async def status(self, req: StatusRequest, span: trace.Span) -> Reply:
        return self.manager.status(req.type, req.name, req.version), []

    async def discover(self, req: DiscoverRequest, span: trace.Span) -> Reply:
        # The store hands back the same tuple while nothing changed, whose reply is then encoded once.
        return await self.manager.discover(req.type, req.name), []

    async def clear(self, req: EmptyRequest, span: trace.Span) -> Reply:
        count, events = self.manager.clear()
        return Cleared(cleared=count), events

    async def stats(self, req: EmptyRequest, span: trace.Span) -> Reply:
        return msgspec.structs.replace(self.manager.stats(), events=self._event_stats()), []

    async def graph(self, req: GraphRequest, span: trace.Span) -> Reply:
        tree = self.manager.dependency_tree(req.type, req.name, req.version)
        span.set_attribute("extension.version", tree.root.version)
        return render(tree, req.format), []
