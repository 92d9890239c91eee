"""The extension manager: what a request asks of the core, from the cache in front of the Nushell runner.

A load resolves the request to one version on disk or in the registry, checks its dependencies, and answers
from the cache (`cache.py`) or runs the loader once: simultaneous loads of one uncached version share one
Nushell run (`flights.py`), and a load with dependencies runs independent ones at the same time
(`tree_loads.py`). The manager publishes nothing itself; each operation returns the events it caused
(`events.py`), in order, and the caller sends them once it has replied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ..contract.errors import LoaderError, UntrustedExtension
from ..contract.messages import (
    Available,
    Event,
    Extension,
    ExtensionType,
    LoadReason,
    NushellInfo,
    Stats,
    Status,
)
from ..runtime.runner import NushellRunner
from . import audit
from .cache import ExtensionCache, key_of
from .dependencies import DependencyTree, dependency_tree
from .events import Clock, EventFactory
from .flights import Miss
from .releases import Releases
from .runs import LoadResult, VersionLoader
from .slices import in_slices
from .statistics import Counters
from .store import ExtensionStore
from .tree_loads import load_tree
from .version_info import VersionInfo, cache_key
from .versions import Constraint, parse_version, sort_newest_first


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PartialLoad:
    """A load with dependencies that failed after some of them had loaded: the error to answer with, and the
    events of what did load, still owed to the subscribers."""

    error: LoaderError
    events: tuple[Event, ...]


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
        """`releases`: the registry's releases, which `store` merges with the disk's versions; fetched before
        a version's first load."""
        self.store = store
        self.releases = releases
        self.runner = runner
        self.instance_id = instance_id
        self.nushell = nushell
        self.events = EventFactory(instance_id, clock)
        self._started = time.monotonic()
        self._cache = ExtensionCache(capacity)
        self.counters = Counters()
        self._versions = VersionLoader(
            self._cache, runner, releases, events=self.events, counters=self.counters, clock=clock
        )

    # --- loads ---

    def look_up(self, extension_type: ExtensionType, name: str, version: str | None) -> Extension | Miss | None:
        """The one look at the cache of a load without dependencies, made where nothing may wait (the
        subscription callback): the cached extension, counted as a hit; a `Miss` to hand to `load`; or None
        where the request cannot be resolved here (an error the load then reports)."""
        if version is not None and parse_version(version) is not None:
            # The hot path: an exact version that is cached needs neither the disk nor a dependency check.
            key = cache_key(extension_type, name, version)
        elif not self.store.has(extension_type, name):
            return None  # an error reply, made in a task: suggesting close names takes a while on a big tree
        else:
            try:
                # The cache holds only what loaded, so a version refused as untrusted is a miss here, and is
                # refused (and its refusal recorded) once, by the load that follows.
                key = self.store.resolve(extension_type, name, Constraint.parse(version)).key
            except LoaderError:
                return None
        hit = self._cache.get(key)
        if hit is None:
            return Miss(key, self._versions.flight(key))
        self.counters.total += 1
        self.counters.hits += 1
        return hit

    async def load(
        self,
        extension_type: ExtensionType,
        name: str,
        version: str | None,
        *,
        reason: LoadReason = "load",
        miss: Miss | None = None,
    ) -> LoadResult:
        """One version, from the cache or by running the loader. `miss`: what `look_up` found for this load, so
        the cache is not looked at again."""
        if miss is None:
            found = self.look_up(extension_type, name, version)
            if isinstance(found, Extension):
                return LoadResult(found, cold=False)
            miss = found
        self.counters.total += 1
        try:
            info = self._resolve(extension_type, name, version)
            dependency_tree(self.store, info)
            return await self._versions.load(info, reason, miss)
        except LoaderError:
            self.counters.failed += 1
            raise

    async def load_with_dependencies(
        self, extension_type: ExtensionType, name: str, version: str | None, *, reason: LoadReason = "load"
    ) -> LoadResult | PartialLoad:
        """The version and every dependency, depth first, independent ones at once; the result is the root's,
        with every event in install order. What fails before anything loaded is raised; a failure after some
        dependencies loaded is returned with their events (`PartialLoad`)."""
        self.counters.total += 1
        try:
            tree = dependency_tree(self.store, self._resolve(extension_type, name, version))
            results, error = await load_tree(
                tree, lambda info: self._versions.load(info, reason), max_concurrent=self.runner.limits.max_concurrent
            )
            events = tuple(event for result in results for event in result.events)
            if error is None:
                return LoadResult(results[-1].extension, results[-1].cold, events)
            if events and isinstance(error, LoaderError):
                self.counters.failed += 1
                return PartialLoad(error, events)
            raise error
        except LoaderError:
            self.counters.failed += 1
            raise

    async def reload(self, extension_type: ExtensionType, name: str, version: str | None) -> LoadResult:
        """Drops every cached version of the extension and loads it again from disk."""
        self.counters.total += 1
        try:
            info = self._resolve(extension_type, name, version)
            dependency_tree(self.store, info)
            self._cache.bump(extension_type, name)
            before = self.loaded(extension_type, name)
            # Load first: when it fails, the cache and everyone's view of it stay as they were.
            result = await self._versions.load(info, "reload", force=True)
            for old in before:
                if key_of(old) != info.key:
                    self._cache.pop(key_of(old))
            unloaded = tuple(self.events.unloaded(e, "reload") for e in before)
            return LoadResult(result.extension, True, unloaded + result.events)
        except LoaderError:
            self.counters.failed += 1
            raise

    async def refresh(self, info: VersionInfo, reason: LoadReason) -> LoadResult:
        """Loads one version again from disk, replacing what is cached (a hot reload)."""
        self.counters.total += 1
        try:
            dependency_tree(self.store, info)
            self._cache.bump(info.extension_type, info.name)
            return await self._versions.load(info, reason, force=True)
        except LoaderError:
            self.counters.failed += 1
            raise

    # --- unloads ---

    def unload(
        self,
        extension_type: ExtensionType,
        name: str,
        version: str,
        reason: Literal["removed", "yanked"],
        *,
        announce: bool = False,
    ) -> list[Event]:
        """One version leaves the cache (it left the disk, or the registry yanked it); `announce`: say so even
        where it was not cached (a loader that follows the registry for its fleet)."""
        self._cache.bump(extension_type, name)
        key = cache_key(extension_type, name, version)
        entry = self._cache.pop(key)
        if entry is None and not announce:
            return []
        audit.record(reason, key, message="dropped from the cache" if entry is not None else "")
        return [self.events.unloaded_version(extension_type, name, version, reason)]

    def unload_all(self) -> list[Event]:
        """Empties the cache (`cache.clear`): an `unloaded` event, reason `cleared`, for every entry."""
        dropped = self._cache.pop_all()
        for ext in dropped:
            audit.record("cleared", key_of(ext))
        return [self.events.unloaded(e, "cleared") for e in dropped]

    def unload_for_peer(
        self, loaded: bool, reason: str, extension_type: ExtensionType, name: str, version: str
    ) -> list[str]:
        """Unloads what another instance's event makes stale, and returns the keys; announces nothing (the peer
        already did).

        A peer's reload (or hot reload) replaces every version of that extension; a peer's `unloaded` for a
        reload, clear or removal names one entry. A peer's own evictions say nothing about this cache."""
        if loaded and reason in ("reload", "hot_reload"):
            self._cache.bump(extension_type, name)
            dropped = self._cache.pop_extension(extension_type, name)
        elif not loaded and reason in ("reload", "cleared", "removed"):
            self._cache.bump(extension_type, name)
            entry = self._cache.pop(cache_key(extension_type, name, version))
            dropped = [entry] if entry is not None else []
        else:
            return []
        for ext in dropped:
            audit.record("dropped", key_of(ext), message=f"after a peer's {reason}")
        return [key_of(e) for e in dropped]

    # --- what is there ---

    def loaded(self, extension_type: ExtensionType | None = None, name: str | None = None) -> list[Extension]:
        """What is cached now (of a type, of one extension), by type and name, newest version first."""
        return self._cache.entries(extension_type, name)

    def status(self, extension_type: ExtensionType, name: str, version: str | None) -> Status:
        self.store.versions(extension_type, name)  # NotFound for a name that is nowhere
        constraint = Constraint.parse(version) if version is not None else None
        versions = [
            e.metadata.version
            for e in self.loaded(extension_type, name)
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

    @property
    def runs(self) -> int:
        """Nushell runs started."""
        return self._versions.runs

    async def wait_runs(self, count: int) -> None:
        """Returns once that many Nushell runs have started (for tests and tools)."""
        await self._versions.wait_runs(count)

    def stats(self) -> Stats:
        return Stats(
            cache=self.counters.cache(len(self._cache), self._cache.capacity),
            loads=self.counters.loads(),
            in_flight=self._versions.in_flight,
            nushell=self.nushell,
            instance_id=self.instance_id,
            uptime_s=round(time.monotonic() - self._started, 3),
            registry=self.releases.stats() if self.releases is not None else None,
        )

    # --- inside ---

    def _resolve(self, extension_type: ExtensionType, name: str, version: str | None) -> VersionInfo:
        info = self.store.resolve(extension_type, name, Constraint.parse(version))
        try:  # trust first: a version its signed state lists but the index lacks has no metadata to read
            info.require_trusted()
        except UntrustedExtension as exc:
            if self.releases is not None:
                self.releases.count_refusal()
            audit.record("refused", info.key, exc.code, exc.reason, signer=exc.signer)
            raise
        info.require_metadata()
        return info
