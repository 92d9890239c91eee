"""Keeps what is served in step with the disk (with `auto_load = true`).

Watches the extension roots (watchfiles, debounced) and, for each extension whose files changed, reconciles
the cache with the disk: a cached version whose files changed is loaded again (`hot_reload`), a cached version
that left the disk is dropped (`removed`), and a new latest version is loaded (`auto_load`). A half-written
extension fails the loader's checks and is left alone until a later change makes it complete and valid; a
change that leaves the files as they were (same digest) announces nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus
from watchfiles import awatch

from ..contract.errors import LoaderError, NotFound
from ..contract.messages import ExtensionType
from ..core.manager import Event, Outcome
from ..core.store import tree_digest
from ..core.versions import Constraint
from ..wire.service import ExtensionService

log = logging.getLogger(__name__)

_FOLDERS = {t.folder: t for t in ExtensionType}


class ExtensionWatcher:
    def __init__(self, service: ExtensionService, *, debounce_ms: int = 300) -> None:
        self.service = service
        self.manager = service.manager
        self.roots = self.manager.store.roots
        self.debounce_ms = debounce_ms
        self.reconciled = 0  # rounds of changes handled
        self._round = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watches until cancelled; `started` once the watch is in place."""
        roots = [r for r in self.roots if r.is_dir()]
        if not roots:
            log.warning("no extension root exists; nothing to watch")
            task_status.started()
            return
        started = False
        store = self.manager.store
        try:
            async for changes in awatch(
                *roots, debounce=self.debounce_ms, step=50, rust_timeout=200, yield_on_timeout=True
            ):
                if not started:  # the first (empty) yield comes once the watch is in place
                    store.watched = True
                    task_status.started()
                    started = True
                if not changes:
                    continue
                affected = sorted(self._affected(Path(p) for _, p in changes))
                for extension_type, name in affected:
                    store.invalidate(extension_type, name)
                for extension_type, name in affected:
                    try:
                        await self.reconcile(extension_type, name)
                    except Exception:  # a file that cannot be read, say: this extension waits, the rest goes on
                        log.exception("could not bring %s %s in step with the disk", extension_type.value, name)
                self.reconciled += 1
                self._round.set()
                self._round = anyio.Event()
        finally:
            store.watched = False  # no one tells the store of changes any more: it checks for itself again

    async def wait_reconciled(self, rounds: int) -> None:
        """Returns once that many rounds of changes have been handled (for tests and tools)."""
        while self.reconciled < rounds:
            await self._round.wait()

    def _affected(self, paths: Iterable[Path]) -> set[tuple[ExtensionType, str]]:
        found: set[tuple[ExtensionType, str]] = set()
        for path in paths:
            for root in self.roots:
                try:
                    parts = path.relative_to(root).parts
                except ValueError:
                    continue
                kind = _FOLDERS.get(parts[0]) if parts else None
                if kind is None:
                    continue
                if len(parts) >= 2:
                    found.add((kind, parts[1]))
                else:  # a whole type folder came or went
                    found.update((kind, e.metadata.name) for e in self.manager.loaded(kind))
                    found.update((kind, n) for n in self.manager.store.names(kind))
        return found

    async def reconcile(self, extension_type: ExtensionType, name: str) -> None:
        store = self.manager.store
        try:
            versions = store.versions(extension_type, name)
        except NotFound:
            versions = {}
        events: list[Event] = []
        cached = {e.metadata.version: e for e in self.manager.cached(extension_type, name)}
        for version, entry in cached.items():
            info = versions.get(version)
            if info is None:
                events += self.manager.remove(extension_type, name, version)
                continue
            if info.metadata is None:
                log.info("%s changed but its metadata is not valid (yet): keeping the loaded copy", info.key)
                continue
            digest = await anyio.to_thread.run_sync(tree_digest, info.path)
            if digest != entry.digest:
                events += await self._attempt(self.manager.refresh(info, "hot_reload"), info.key)
        latest = Constraint.parse(None).best(v for v, i in versions.items() if i.metadata is not None)
        if latest is not None and latest not in cached:
            load = self.manager.load(extension_type, name, latest, reason="auto_load")
            events += await self._attempt(load, versions[latest].key)
        if events:
            await self.service.publisher.publish(events)

    async def _attempt(self, load: Awaitable[Outcome], key: str) -> list[Event]:
        try:
            outcome = await load
        except LoaderError as exc:
            log.warning("%s changed on disk but does not load (%s): %s", key, exc.code, exc.message)
            return []
        return outcome.events
