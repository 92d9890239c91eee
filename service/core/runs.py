"""A cold load of one resolved version: answered from the cache, by joining the run of that version under way
(`flights.py`), or by fetching it when it comes from the registry and running the Nushell loader; what loaded
is cached unless the extension changed meanwhile, and the events it caused are part of the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..contract.errors import LoaderError, LoadFailed
from ..contract.messages import Event, Extension, LoadReason
from ..notify import Notifier
from ..runtime.runner import NushellRunner
from . import audit
from .cache import ExtensionCache, key_of
from .events import Clock, EventFactory
from .flights import Flight, Flights, Miss
from .metrics import load_duration
from .releases import Releases
from .statistics import Counters
from .version_info import VersionInfo


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load gave: the extension, whether this request ran Nushell, and the events it caused."""

    extension: Extension
    cold: bool
    events: tuple[Event, ...] = ()


class VersionLoader:
    def __init__(
        self,
        cache: ExtensionCache,
        runner: NushellRunner,
        releases: Releases | None,
        *,
        events: EventFactory,
        counters: Counters,
        clock: Clock,
    ) -> None:
        self._cache = cache
        self._runner = runner
        self._releases = releases
        self._events = events
        self._counters = counters
        self._clock = clock
        self._flights = Flights()
        self.in_flight = 0
        self.runs = 0  # Nushell runs started
        self._runs_changed = Notifier()

    def flight(self, key: str) -> Flight | None:
        """The run of that version under way, if any."""
        return self._flights.get(key)

    async def wait_runs(self, count: int) -> None:
        """Returns once that many Nushell runs have started (for tests and tools)."""
        await self._runs_changed.wait_until(lambda: self.runs >= count)

    async def load(
        self, info: VersionInfo, reason: LoadReason, miss: Miss | None = None, *, force: bool = False
    ) -> LoadResult:
        """From the cache, or by joining the run under way, or by running the loader. `miss`: the cache was
        looked at already and had nothing for this version; `force`: run whatever is cached or under way."""
        if not force:
            flight = self._flights.get(info.key)
            # The cache is looked at here unless the caller's look found nothing; and again when the run that
            # look saw has ended (or a reload replaced it) before this load began: then this load sees what a load
            # that began now would, what that run cached if it still stands.
            looked = miss is not None and miss.key == info.key
            if not looked or (flight is None and miss is not None and miss.flight is not None):
                cached = self._cache.get(info.key)
                if cached is not None:
                    self._counters.hits += 1
                    return LoadResult(cached, cold=False)
            if flight is not None:
                self._counters.coalesced += 1
                return LoadResult(await flight.result(), cold=False)
        self._counters.misses += 1
        # A forced run (reload, hot reload) replaces any flight before it: loads that come after join this one.
        flight = self._flights.start(info.key)
        try:
            return await self._run(info, reason, flight)
        finally:
            self._flights.end(info.key, flight)

    async def _run(self, info: VersionInfo, reason: LoadReason, flight: Flight) -> LoadResult:
        revision = (info.extension_type, info.name, self._cache.revision(info.extension_type, info.name))
        started = time.perf_counter()
        self.in_flight += 1
        self.runs += 1
        self._runs_changed.notify()
        try:
            root = await self._releases.fetch(info) if info.source == "registry" and self._releases else None
            result = await self._runner.load(info.extension_type, info.name, info.version, root=root)
        except LoaderError as exc:
            flight.error = exc
            audit.record(reason, info.key, exc.code, exc.message)
            raise
        except Exception as exc:
            flight.error = LoadFailed(f"internal error ({type(exc).__name__}); see the service log")
            raise
        finally:
            self.in_flight -= 1
        duration_ms = (time.perf_counter() - started) * 1000
        load_duration.record(duration_ms, {"extension.type": info.extension_type.value, "reason": reason})
        extension = Extension(metadata=result.metadata, path=result.path, loaded_at=self._clock(), digest=result.digest)
        flight.extension = extension
        self._counters.cold += 1
        events: list[Event] = [self._events.loaded(extension, reason, duration_ms)]
        evicted = self._cache.put(info.key, extension, revision)
        for ext in evicted or ():
            self._counters.evictions += 1
            audit.record("evicted", key_of(ext))
            events.append(self._events.unloaded(ext, "evicted"))
        audit.record(reason, info.key, message=f"in {duration_ms:.1f} ms", digest=result.digest)
        flight.done.set()
        return LoadResult(extension, cold=True, events=tuple(events))
