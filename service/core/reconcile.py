"""Keeps what is served in step with the disk, while the extension roots are watched (`watch = true`).

Every round of changes makes the store forget what it read of each extension touched, so `discover`, `status`
and `graph` see the disk as it is now while the store otherwise trusts what it read. With `auto_load = true`
as well (`act`), the `Reconciler` also brings the cache in step with the disk for each of them: a cached
version whose files changed is loaded again (`hot_reload`), a cached version that left the disk is dropped
(`removed`), and a new latest version is loaded (`auto_load`). A half-written extension fails the loader's
checks and is left alone until a later change makes it complete and valid; a change that leaves the files as
they were (same digest) announces nothing. The rounds of changes come from the runtime's `DiskWatcher`; the
events go to the `publish` it is given, so this module never touches NATS.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ..contract.errors import LoaderError, NotFound
from ..contract.messages import Event, ExtensionType
from ..notify import Notifier
from ..runtime.watcher import Change
from .folders import tree_digest
from .manager import ExtensionManager
from .runs import LoadResult
from .versions import Constraint

log = logging.getLogger(__name__)

Publish = Callable[[list[Event]], Awaitable[None]]


class Reconciler:
    """`act` False: a change only makes the store read again (nothing cached is loaded or dropped, no event)."""

    def __init__(self, manager: ExtensionManager, publish: Publish, *, act: bool = True) -> None:
        self.manager = manager
        self.publish = publish
        self.act = act
        self.reconciled = 0  # rounds of changes handled
        self._rounds = Notifier()

    async def run(
        self, rounds: AsyncIterator[set[Change]], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Handles rounds of changes until they end or this is cancelled; `started` once the watch is in place
        (its first, empty, round), from when on the store trusts the watch instead of checking the disk."""
        started = False
        store = self.manager.store
        try:
            async for changed in rounds:
                if not started:
                    store.watched = True
                    task_status.started()
                    started = True
                if changed:
                    await self.reconcile_all(changed)
        finally:
            store.watched = False  # no one tells the store of changes any more: it checks for itself again
            if not started:
                task_status.started()

    async def reconcile_all(self, changed: Iterable[Change]) -> None:
        affected = sorted(self._expand(changed))
        for extension_type, name in affected:
            self.manager.store.invalidate(extension_type, name)
        if self.act:
            for extension_type, name in affected:
                try:
                    await self.reconcile(extension_type, name)
                except Exception:  # a file that cannot be read, say: this extension waits, the rest goes on
                    log.exception("could not bring %s %s in step with the disk", extension_type.value, name)
        self.reconciled += 1
        self._rounds.notify()

    async def wait_reconciled(self, rounds: int) -> None:
        """Returns once that many rounds of changes have been handled (for tests and tools)."""
        await self._rounds.wait_until(lambda: self.reconciled >= rounds)

    def _expand(self, changed: Iterable[Change]) -> set[tuple[ExtensionType, str]]:
        found: set[tuple[ExtensionType, str]] = set()
        for kind, name in changed:
            if name is not None:
                found.add((kind, name))
            else:  # a whole type folder came or went
                found.update((kind, e.metadata.name) for e in self.manager.loaded(kind))
                found.update((kind, n) for n in self.manager.store.names(kind))
        return found

    async def reconcile(self, extension_type: ExtensionType, name: str) -> None:
        manager = self.manager
        try:
            versions = manager.store.versions(extension_type, name)
        except NotFound:
            versions = {}
        events: list[Event] = []
        cached = {e.metadata.version: e for e in manager.loaded(extension_type, name)}
        for version, entry in cached.items():
            info = versions.get(version)
            if info is None:
                events += manager.unload(extension_type, name, version, "removed")
                continue
            if info.metadata is None:
                log.info("%s changed but its metadata is not valid (yet): keeping the loaded copy", info.key)
                continue
            digest = await anyio.to_thread.run_sync(tree_digest, info.path)
            if digest != entry.digest:
                events += await self._attempt(manager.refresh(info, "hot_reload"), info.key)
        latest = Constraint.parse(None).best(v for v, i in versions.items() if i.metadata is not None)
        if latest is not None and latest not in cached:
            load = manager.load(extension_type, name, latest, reason="auto_load")
            events += await self._attempt(load, versions[latest].key)
        if events:
            await self.publish(events)

    async def _attempt(self, load: Awaitable[LoadResult], key: str) -> list[Event]:
        try:
            result = await load
        except LoaderError as exc:
            log.warning("%s changed on disk but does not load (%s): %s", key, exc.code, exc.message)
            return []
        return list(result.events)
