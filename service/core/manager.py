"""The extension manager: the LRU cache in front of the Nushell runner, with single-flight and statistics.

A load resolves the request to one version on disk, checks its dependencies, and answers from the cache
(key `{type}:{name}:{version}`) or runs the loader once: any number of simultaneous requests for the same
uncached key share one Nushell run, and a load with dependencies runs independent ones at the same time. The
manager publishes nothing itself; each operation returns the events it caused, in order, and the caller sends
them once it has replied.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from cachetools import LRUCache

from ..contract.errors import LoaderError, LoadFailed, Unavailable, UntrustedExtension
from ..contract.messages import (
    Available,
    CacheStats,
    Extension,
    ExtensionLoaded,
    ExtensionType,
    ExtensionUnloaded,
    LoadReason,
    LoadStats,
    NushellInfo,
    Stats,
    Status,
    UnloadReason,
)
from ..runtime.runner import NushellRunner
from . import audit
from .dependencies import DependencyTree, dependency_tree
from .metrics import load_duration
from .releases import Releases
from .slices import in_slices
from .store import ExtensionStore, VersionInfo, cache_key
from .versions import Constraint, parse_version, sort_newest_first

log = logging.getLogger(__name__)

Event = ExtensionLoaded | ExtensionUnloaded
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Outcome:
    """What a load gave: the extension, whether this request ran Nushell, and the events to publish."""

    extension: Extension
    cold: bool
    events: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    extension: Extension | None = None
    error: LoaderError | None = None


@dataclass(slots=True)
class _Counters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    total: int = 0
    cold: int = 0
    failed: int = 0
    coalesced: int = 0


class _LRU(LRUCache[str, Extension]):
    """cachetools' LRU, telling its owner what it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[Extension], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, Extension]:
        key, value = super().popitem()
        self._on_evict(value)
        return key, value


class ExtensionManager:
    def __init__(
        self,
        store: ExtensionStore,
        runner: NushellRunner,
        *,
        capacity: int,
        instance_id: str,
        nushell: NushellInfo,
        releases: Releases | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """`releases`: the registry's versions, merged into the store's and fetched before their first load."""
        self.store = store
        self.releases = releases
        if releases is not None:
            store.registry = releases
        self.runner = runner
        self.instance_id = instance_id
        self.nushell = nushell
        self._clock = clock
        self._started = time.monotonic()
        self._evicted: list[Extension] = []
        self._cache = _LRU(capacity, self._evicted.append)
        self._flights: dict[str, _Flight] = {}
        self._generation: dict[tuple[ExtensionType, str], int] = {}
        self._in_flight = 0
        self.runs = 0  # Nushell runs started
        self._run_started = anyio.Event()
        self.counters = _Counters()

    # --- requests ---

    async def load(
        self,
        extension_type: ExtensionType,
        name: str,
        version: str | None,
        *,
        with_dependencies: bool = False,
        reason: LoadReason = "load",
        failed_events: list[Event] | None = None,
    ) -> Outcome:
        """`failed_events`: where the events of the loads that did happen go when the whole fails (a dependency
        loaded before another one failed): the caller still owes them to its subscribers."""
        if not with_dependencies:
            hit = self.hit(extension_type, name, version)
            if hit is not None:
                return Outcome(hit, cold=False)
        self.counters.total += 1
        try:
            info = self._resolve(extension_type, name, version)
            tree = dependency_tree(self.store, info)
            if not with_dependencies:
                return await self._load_one(info, reason)
            return await self._load_tree(tree, reason, failed_events)
        except LoaderError:
            self.counters.failed += 1
            raise

    def hit(self, extension_type: ExtensionType, name: str, version: str | None) -> Extension | None:
        """A load (without dependencies) that the cache answers as it stands, counted as a hit; None, counting
        nothing, for a miss or for anything that is not a plain cache hit (an error, say). Never waits."""
        if version is not None and parse_version(version) is not None:
            # The hot path: an exact version that is cached needs neither the disk nor a dependency check.
            hit = self._cache.get(cache_key(extension_type, name, version))
        elif not self.store.has(extension_type, name):
            return None  # an error reply, made in a task: suggesting close names takes a while on a big tree
        else:
            try:
                # The cache holds only what loaded, so a version refused as untrusted is a miss here, and is
                # refused (and its refusal recorded) once, by the load that follows.
                hit = self._cache.get(self.store.resolve(extension_type, name, Constraint.parse(version)).key)
            except LoaderError:
                return None
        if hit is not None:
            self.counters.total += 1
            self.counters.hits += 1
        return hit

    async def reload(self, extension_type: ExtensionType, name: str, version: str | None) -> Outcome:
        """Drops every cached version of the extension and loads it again from disk."""
        self.counters.total += 1
        try:
            info = self._resolve(extension_type, name, version)
            dependency_tree(self.store, info)
            self._bump(extension_type, name)
            before = self.cached(extension_type, name)
            # Load first: when it fails, the cache and everyone's view of it stay as they were.
            outcome = await self._load_one(info, "reload", force=True)
            for old in before:
                if _key(old) != info.key:
                    self._cache.pop(_key(old), None)
            events: list[Event] = [self._unloaded(e, "reload") for e in before]
            return Outcome(outcome.extension, True, [*events, *outcome.events])
        except LoaderError:
            self.counters.failed += 1
            raise

    async def refresh(self, info: VersionInfo, reason: LoadReason) -> Outcome:
        """Loads one version again from disk, replacing what is cached (a hot reload)."""
        self.counters.total += 1
        try:
            dependency_tree(self.store, info)
            self._bump(info.extension_type, info.name)
            return await self._load_one(info, reason, force=True)
        except LoaderError:
            self.counters.failed += 1
            raise

    def remove(self, extension_type: ExtensionType, name: str, version: str) -> list[Event]:
        """Forgets one version that left the disk."""
        self._bump(extension_type, name)
        entry = self._cache.pop(cache_key(extension_type, name, version), None)
        if entry is None:
            return []
        audit.record("removed", _key(entry))
        return [self._unloaded(entry, "removed")]

    def yanked(self, info: VersionInfo, *, announce: bool) -> list[Event]:
        """A registry version was yanked: it leaves the cache (a pinned load fetches it again), and the
        `unloaded` event says so; `announce`: say so even where it was not cached (a loader that follows the
        registry for its fleet)."""
        self._bump(info.extension_type, info.name)
        entry = self._cache.pop(info.key, None)
        if entry is None and not announce:
            return []
        audit.record("yanked", info.key, message="dropped from the cache" if entry is not None else "")
        return [self._event_unloaded(info.extension_type, info.name, info.version, "yanked")]

    def cached(self, extension_type: ExtensionType, name: str) -> list[Extension]:
        return [e for e in self.loaded(extension_type) if e.metadata.name == name]

    def forget_for_peer(
        self, loaded: bool, reason: str, extension_type: ExtensionType, name: str, version: str
    ) -> list[str]:
        """Drops what another instance's event makes stale; publishes nothing (the peer already did).

        A peer's reload (or hot reload) replaces every version of that extension; a peer's `unloaded` for a
        reload, clear or removal names one entry. A peer's own evictions say nothing about this cache."""
        if loaded and reason in ("reload", "hot_reload"):
            self._bump(extension_type, name)
            dropped = self._drop(extension_type, name)
        elif not loaded and reason in ("reload", "cleared", "removed"):
            self._bump(extension_type, name)
            entry = self._cache.pop(cache_key(extension_type, name, version), None)
            dropped = [entry] if entry is not None else []
        else:
            return []
        for ext in dropped:
            audit.record("dropped", _key(ext), message=f"after a peer's {reason}")
        return [_key(e) for e in dropped]

    def clear(self) -> tuple[int, list[Event]]:
        dropped = list(self._cache.values())
        self._cache.clear()
        for key in list(self._generation):
            self._generation[key] += 1
        for ext in dropped:
            audit.record("cleared", _key(ext))
        return len(dropped), [self._unloaded(e, "cleared") for e in dropped]

    def loaded(self, extension_type: ExtensionType | None = None) -> list[Extension]:
        found = [e for e in self._cache.values() if extension_type in (None, e.metadata.extension_type)]
        return sorted(found, key=_sort_key)

    def status(self, extension_type: ExtensionType, name: str, version: str | None) -> Status:
        self.store.versions(extension_type, name)  # NotFound for a name that is nowhere
        constraint = Constraint.parse(version) if version is not None else None
        versions = [
            e.metadata.version
            for e in self.cached(extension_type, name)
            if constraint is None or constraint.matches(e.metadata.version)
        ]
        return Status(loaded=bool(versions), versions=tuple(sort_newest_first(versions)))

    async def discover(self, extension_type: ExtensionType | None, name: str | None) -> tuple[Available, ...]:
        """What is on disk: the same tuple while nothing in it changed. The whole listing is checked (and where
        the disk changed, read) on the event loop a slice at a time; one name is read at once, as a load reads
        it."""
        if name is not None:
            return self.store.available(extension_type, name)
        return await in_slices(self.store.listing(extension_type))

    def dependency_tree(self, extension_type: ExtensionType, name: str, version: str | None) -> DependencyTree:
        return dependency_tree(self.store, self._resolve(extension_type, name, version))

    async def wait_runs(self, count: int) -> None:
        """Returns once that many Nushell runs have started (for tests and tools)."""
        while self.runs < count:
            await self._run_started.wait()

    def stats(self) -> Stats:
        c = self.counters
        lookups = c.hits + c.misses
        return Stats(
            cache=CacheStats(
                size=len(self._cache),
                capacity=int(self._cache.maxsize),
                hits=c.hits,
                misses=c.misses,
                hit_ratio=round(c.hits / lookups, 4) if lookups else 0.0,
                evictions=c.evictions,
            ),
            loads=LoadStats(total=c.total, cold=c.cold, failed=c.failed, coalesced=c.coalesced),
            in_flight=self._in_flight,
            nushell=self.nushell,
            instance_id=self.instance_id,
            uptime_s=round(time.monotonic() - self._started, 3),
            registry=self.releases.stats() if self.releases is not None else None,
        )

    # --- inside ---

    def _resolve(self, extension_type: ExtensionType, name: str, version: str | None) -> VersionInfo:
        constraint = Constraint.parse(version)
        info = self.store.resolve(extension_type, name, constraint)
        info.require_metadata()
        try:
            info.require_trusted()
        except UntrustedExtension as exc:
            if self.releases is not None:
                self.releases.refused += 1
            audit.record("refused", info.key, exc.code, exc.reason, signer=exc.signer)
            raise
        return info

    async def _load_tree(
        self, tree: DependencyTree, reason: LoadReason, failed_events: list[Event] | None = None
    ) -> Outcome:
        """Loads every node of the tree, each as soon as all of its own dependencies are loaded, so independent
        ones load at the same time (at most `max_concurrent` of this tree at once). The events come in `order`
        whichever finished first; the outcome is the root's.

        A failure fails the whole with the error a load in `order`, one at a time, would meet first: no node
        after the earliest failure in `order` is started, none before it is held back (its dependencies all
        come before it), and what is already running finishes (another request may share its run)."""
        order = tree.order
        index = {node.key: i for i, node in enumerate(order)}
        waiting_on: list[set[int]] = [set() for _ in order]
        dependents: list[list[int]] = [[] for _ in order]
        for source, target in tree.edges:
            if source in index and target in index:
                waiting_on[index[source]].add(index[target])
                dependents[index[target]].append(index[source])
        outcomes: list[Outcome | None] = [None] * len(order)
        errors: dict[int, Exception] = {}
        started = [False] * len(order)
        slots = anyio.CapacityLimiter(self.runner.limits.max_concurrent)

        async def load(i: int) -> None:
            try:
                async with slots:
                    outcomes[i] = await self._load_one(order[i], reason)
            except Exception as exc:  # a LoaderError, or a defect: raised below if it is the earliest
                errors[i] = exc
            else:
                for j in dependents[i]:
                    waiting_on[j].discard(i)
            start_ready()

        def start_ready() -> None:
            earliest_failure = min(errors, default=len(order))
            for i in range(earliest_failure):
                if not started[i] and not waiting_on[i]:
                    started[i] = True
                    tg.start_soon(load, i)

        async with anyio.create_task_group() as tg:
            start_ready()
        events = [event for outcome in outcomes if outcome is not None for event in outcome.events]
        if errors:
            if failed_events is not None:
                failed_events.extend(events)
            raise errors[min(errors)]
        root = outcomes[-1]
        assert root is not None
        return Outcome(root.extension, root.cold, events)

    async def _load_one(self, info: VersionInfo, reason: LoadReason, *, force: bool = False) -> Outcome:
        if not force:
            cached = self._cache.get(info.key)
            if cached is not None:
                self.counters.hits += 1
                return Outcome(cached, cold=False)
            flight = self._flights.get(info.key)
            if flight is not None:
                self.counters.coalesced += 1
                await flight.done.wait()
                if flight.error is not None:
                    raise flight.error
                assert flight.extension is not None
                return Outcome(flight.extension, cold=False)
        self.counters.misses += 1
        flight = _Flight()
        # A forced run (reload, hot reload) replaces any flight before it: loads that come after join this one.
        self._flights[info.key] = flight
        try:
            return await self._run(info, reason, flight)
        finally:
            if self._flights.get(info.key) is flight:
                del self._flights[info.key]
            if not flight.done.is_set():
                flight.error = flight.error or Unavailable("the load was cancelled")
                flight.done.set()

    async def _run(self, info: VersionInfo, reason: LoadReason, flight: _Flight) -> Outcome:
        generation = self._generation.get((info.extension_type, info.name), 0)
        started = time.perf_counter()
        self._in_flight += 1
        self.runs += 1
        self._run_started.set()
        self._run_started = anyio.Event()
        try:
            root = await self.releases.fetch(info) if info.source == "registry" and self.releases else None
            result = await self.runner.load(info.extension_type, info.name, info.version, root=root)
        except LoaderError as exc:
            flight.error = exc
            audit.record(reason, info.key, exc.code, exc.message)
            raise
        except Exception as exc:
            flight.error = LoadFailed(f"internal error ({type(exc).__name__}); see the service log")
            raise
        finally:
            self._in_flight -= 1
        duration_ms = (time.perf_counter() - started) * 1000
        load_duration.record(duration_ms, {"extension.type": info.extension_type.value, "reason": reason})
        extension = Extension(metadata=result.metadata, path=result.path, loaded_at=self._clock(), digest=result.digest)
        flight.extension = extension
        self.counters.cold += 1
        events: list[Event] = []
        if self._generation.get((info.extension_type, info.name), 0) == generation:
            self._cache[info.key] = extension
            events.extend(self._unloaded(e, "evicted") for e in self._take_evicted())
        events.insert(
            0,
            ExtensionLoaded(
                event_id=new_id(),
                reason=reason,
                extension=extension,
                cold=True,
                duration_ms=round(duration_ms, 3),
                instance_id=self.instance_id,
                timestamp=self._clock(),
            ),
        )
        audit.record(reason, info.key, message=f"in {duration_ms:.1f} ms", digest=result.digest)
        flight.done.set()
        return Outcome(extension, cold=True, events=events)

    def _bump(self, extension_type: ExtensionType, name: str) -> None:
        """What is cached of this extension is about to change: a load already running for it will not be
        cached when it ends."""
        key = (extension_type, name)
        self._generation[key] = self._generation.get(key, 0) + 1

    def _take_evicted(self) -> list[Extension]:
        evicted, self._evicted[:] = list(self._evicted), []
        self.counters.evictions += len(evicted)
        for ext in evicted:
            audit.record("evicted", _key(ext))
        return evicted

    def _drop(self, extension_type: ExtensionType, name: str) -> list[Extension]:
        prefix = cache_key(extension_type, name, "")
        dropped = [self._cache.pop(k) for k in [k for k in self._cache if k.startswith(prefix)]]
        return sorted(dropped, key=_sort_key)

    def _unloaded(self, extension: Extension, reason: UnloadReason) -> ExtensionUnloaded:
        meta = extension.metadata
        return self._event_unloaded(meta.extension_type, meta.name, meta.version, reason)

    def _event_unloaded(
        self, extension_type: ExtensionType, name: str, version: str, reason: UnloadReason
    ) -> ExtensionUnloaded:
        return ExtensionUnloaded(
            event_id=new_id(),
            reason=reason,
            extension_type=extension_type,
            name=name,
            version=version,
            instance_id=self.instance_id,
            timestamp=self._clock(),
        )


def new_id() -> str:
    return uuid.uuid4().hex


def _key(extension: Extension) -> str:
    m = extension.metadata
    return cache_key(m.extension_type, m.name, m.version)


def _sort_key(extension: Extension) -> tuple[str, str, object]:
    m = extension.metadata
    parsed = parse_version(m.version)
    # Newest first within a name: negate by sorting on the inverted tuple of the parsed version.
    return (m.extension_type.value, m.name, _Desc(parsed))


class _Desc:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(self.value > other.value)  # type: ignore[operator]
