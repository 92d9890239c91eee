"""The subjects of the contract in one table: every request subject and every event subject.

A request subject says what it takes and answers, whether it has a fleet twin (`all.<suffix>`, which every
instance answers for itself), how the service answers it, and which users of nats.conf may send it. The wire's
subscriptions and `$SRV` endpoints (`ROUTES`), `schemas/` and its AsyncAPI document, and the command line read
it; tests/contract/test_subjects.py holds nats.conf and README.md's table of subjects against it.

A new request subject is a row in `REQUESTS`, its handler in service/wire/handlers.py, its permissions in
nats.conf and its row in README.md's table; then `make schemas` writes its schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgspec import Struct

from .envelopes import InstanceReply
from .events import ExtensionLoaded, ExtensionUnloaded
from .replies import Available, Cleared, Extension, Graph, GraphText, Stats, Status
from .requests import (
    DiscoverRequest,
    EmptyRequest,
    GraphRequest,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)

# The users of nats.conf, by role.
ORCHESTRATOR = "orchestrator"  # sends requests (the orchestrator, people)
LOADER = "loader"  # the service: serves every request subject, publishes and reads the events
OBSERVER = "observer"  # reads the events


@dataclass(frozen=True, slots=True)
class RequestSubject:
    """One request-reply subject."""

    suffix: str  # the subject after the prefix: `cache.clear` is `extensions.cache.clear`
    request: type[Struct]
    data: tuple[Any, ...]  # the types a successful reply's `data` may hold; more than one: any of them
    summary: str
    # A twin `all.<suffix>` that every instance answers for itself, outside the queue group: for the subjects
    # whose answer describes the one instance that gives it.
    fleet: bool = False
    # Answered in the subscription's callback, which costs a fraction of starting a task: for a subject that
    # waits on nothing. Otherwise in a task of its own. (A load the cache answers is answered in the callback
    # all the same: the dispatcher looks it up first.)
    inline: bool = False
    # Its handler may return events to publish. Through JetStream a publish waits for the server's
    # acknowledgement, so there such a subject is answered in a task even when it is marked inline.
    events: bool = False
    callers: tuple[str, ...] = (ORCHESTRATOR,)  # the users of nats.conf that may send it


@dataclass(frozen=True, slots=True)
class Route:
    """One subject the service takes requests on: a request subject, or its fleet twin."""

    subject: RequestSubject
    twin: bool = False  # the fleet twin: every instance answers, its data wrapped in an `InstanceReply`

    @property
    def suffix(self) -> str:
        return f"all.{self.subject.suffix}" if self.twin else self.subject.suffix

    @property
    def endpoint(self) -> str:
        """Its name in `$SRV.INFO` and `$SRV.STATS`: `cache_clear`, `all_list`."""
        return self.suffix.replace(".", "_")

    @property
    def request(self) -> type[Struct]:
        return self.subject.request

    @property
    def data(self) -> tuple[Any, ...]:
        if self.twin:
            return tuple(InstanceReply[data] for data in self.subject.data)  # type: ignore[valid-type]
        return self.subject.data

    @property
    def summary(self) -> str:
        if self.twin:
            return f"Every instance answers, each with its instance id and its own {self.subject.suffix} reply."
        return self.subject.summary

    @property
    def queue(self) -> bool:
        """Served in the queue group (one instance answers); False: every instance answers."""
        return not self.twin

    @property
    def reply_file(self) -> str:
        """Its reply's schema in `schemas/`."""
        return f"{self.suffix}.reply.json"


@dataclass(frozen=True, slots=True)
class EventSubject:
    """One event subject: the service publishes it and reads the other instances' events on it."""

    suffix: str
    event: type[Struct]
    summary: str
    readers: tuple[str, ...] = (ORCHESTRATOR, OBSERVER)  # the users of nats.conf that may subscribe, beside it


REQUESTS: tuple[RequestSubject, ...] = (
    RequestSubject(
        "load", LoadRequest, (Extension,), "Load one extension; answered from the cache when it is there.", events=True
    ),
    RequestSubject(
        "reload",
        ReloadRequest,
        (Extension,),
        "Drop every cached version of an extension and load it again.",
        events=True,
    ),
    RequestSubject(
        "list",
        ListRequest,
        (list[Extension],),
        "What the instance that answers has loaded now.",
        fleet=True,
        inline=True,
    ),
    RequestSubject(
        "status",
        StatusRequest,
        (Status,),
        "Whether the instance that answers has an extension loaded now.",
        fleet=True,
    ),
    RequestSubject("discover", DiscoverRequest, (list[Available],), "What is available on disk."),
    RequestSubject(
        "cache.clear",
        EmptyRequest,
        (Cleared,),
        "Empty the cache of the instance that answers; how many it dropped.",
        fleet=True,
        inline=True,
        events=True,
    ),
    RequestSubject(
        "stats",
        EmptyRequest,
        (Stats,),
        "Cache, load and Nushell statistics of the instance that answers.",
        fleet=True,
        inline=True,
    ),
    RequestSubject("graph", GraphRequest, (Graph, GraphText), "The resolved dependency graph of one extension."),
)

# Every subject the service takes requests on: the request subjects, then their fleet twins.
ROUTES: tuple[Route, ...] = (
    *(Route(subject) for subject in REQUESTS),
    *(Route(subject, twin=True) for subject in REQUESTS if subject.fleet),
)

EVENTS: tuple[EventSubject, ...] = (
    EventSubject(
        "loaded",
        ExtensionLoaded,
        "Published after every load that was not answered from the cache, and after every reload.",
    ),
    EventSubject("unloaded", ExtensionUnloaded, "Published whenever an entry leaves the cache."),
)


def request_subject(suffix: str) -> RequestSubject:
    """The request subject of that suffix (`cache.clear`); KeyError names the ones there are."""
    for subject in REQUESTS:
        if subject.suffix == suffix:
            return subject
    raise KeyError(f"no request subject {suffix!r}; there are {', '.join(s.suffix for s in REQUESTS)}")


def event_suffix(event: type[Struct]) -> str:
    """The subject suffix an event of that struct is published on (`loaded`)."""
    return next(subject.suffix for subject in EVENTS if subject.event is event)
