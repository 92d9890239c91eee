"""Single flight: any number of simultaneous loads of one uncached version share one Nushell run.

A run is a `Flight` under the version's cache key from the moment it starts until it ends; a load that finds
one joins it and gets its extension or its error. A forced run (a reload, a hot reload) replaces the flight
before it, so loads that come after it join the new run. `Miss` is what a look at the cache that found
nothing hands on to the load that follows, so the load does not look again (but where the run it saw ended
in between).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from ..contract.errors import LoaderError, Unavailable
from ..contract.messages import Extension


@dataclass(slots=True)
class Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    extension: Extension | None = None
    error: LoaderError | None = None

    async def result(self) -> Extension:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.extension is not None
        return self.extension


@dataclass(frozen=True, slots=True)
class Miss:
    """The cache had nothing under `key` when it was looked at; `flight` is the run of that version that was
    under way then, if any. The load joins the run under way when it begins; if the one seen has ended by then
    (or a reload replaced it), the load looks at the cache again, as a load that began then would."""

    key: str
    flight: Flight | None


class Flights:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def get(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def start(self, key: str) -> Flight:
        flight = Flight()
        self._flights[key] = flight
        return flight

    def end(self, key: str, flight: Flight) -> None:
        """The run is over (done, failed or cancelled): its joiners are woken, and new loads no longer join it."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.done.is_set():
            flight.error = flight.error or Unavailable("the load was cancelled")
            flight.done.set()
