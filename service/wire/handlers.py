"""The request handlers: one plain method per subject, from a decoded request to the reply's data and the
events to publish once the reply has gone (a load with dependencies that failed after some of them loaded
answers with its error in place of the data, and still owes their events). The fleet subjects
(`<prefix>.all.list`, ...) reuse them: every instance answers with its own reply, under its instance id.

They know nothing of NATS (no message, no connection, no headers): the dispatcher decodes, calls, encodes and
replies. What they may touch is the manager and the span they are given; errors are raised as the contract's
`LoaderError`s and turned into replies by the dispatcher.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from opentelemetry import trace

from ..contract.messages import (
    Cleared,
    DiscoverRequest,
    EmptyRequest,
    Event,
    EventStats,
    Extension,
    GraphRequest,
    InstanceReply,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)
from ..contract.subjects import REQUESTS, ROUTES, Route
from ..core.flights import Miss
from ..core.graph import render
from ..core.manager import ExtensionManager, PartialLoad
from .tracing import describe_outcome

# The reply's data (or the `LoaderError` to answer with, once something changed), and the events to publish.
Reply = tuple[Any, Sequence[Event]]
# (request, span), and for a load the dispatcher's `Miss` when it looked at the cache already.
Handler = Callable[..., Awaitable[Reply]]


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

    def look_up(self, req: LoadRequest) -> Extension | Miss | None:
        """The load's one look at the cache, where nothing may wait (see `ExtensionManager.look_up`); a load
        with dependencies is never answered by it."""
        if req.with_dependencies:
            return None
        return self.manager.look_up(req.type, req.name, req.version)

    async def load(self, req: LoadRequest, span: trace.Span, miss: Miss | None = None) -> Reply:
        if req.with_dependencies:
            result = await self.manager.load_with_dependencies(req.type, req.name, req.version)
            if isinstance(result, PartialLoad):
                return result.error, result.events
        else:
            result = await self.manager.load(req.type, req.name, req.version, miss=miss)
        describe_outcome(span, result.extension, result.cold)
        return result.extension, result.events

    async def reload(self, req: ReloadRequest, span: trace.Span) -> Reply:
        result = await self.manager.reload(req.type, req.name, req.version)
        describe_outcome(span, result.extension, cold=True)
        return result.extension, result.events

    async def list(self, req: ListRequest, span: trace.Span) -> Reply:
        return self.manager.loaded(req.type), []

    async def status(self, req: StatusRequest, span: trace.Span) -> Reply:
        return self.manager.status(req.type, req.name, req.version), []

    async def discover(self, req: DiscoverRequest, span: trace.Span) -> Reply:
        # The store hands back the same tuple while nothing changed, whose reply is then encoded once.
        return await self.manager.discover(req.type, req.name), []

    async def clear(self, req: EmptyRequest, span: trace.Span) -> Reply:
        events = self.manager.unload_all()
        return Cleared(cleared=len(events)), events

    async def stats(self, req: EmptyRequest, span: trace.Span) -> Reply:
        return msgspec.structs.replace(self.manager.stats(), events=self._event_stats()), []

    async def graph(self, req: GraphRequest, span: trace.Span) -> Reply:
        tree = self.manager.dependency_tree(req.type, req.name, req.version)
        span.set_attribute("extension.version", tree.root.version)
        return render(tree, req.format), []
