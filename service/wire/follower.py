"""Following the registry's index on JetStream, and bringing the cache in step with it.

`RegistryFollower` opens the two buckets once connected, reads the whole index, then watches it. Each change
goes to the core's `Releases` (which judges trust) and from there to the cache: a yanked version leaves it
(`extensions.unloaded`, reason `yanked`); with `auto_update`, a newly published version that is now the
latest is fetched and loaded ahead of any request (`extensions.loaded`, reason `published`).

The watch is started anew after every reconnect, and at once when it breaks while the connection holds (its
consumer was deleted, or in a cluster it may be on another server, which stopped): the registry counts as
reachable meanwhile, unless that new watch fails too. While JetStream cannot be reached the follower says so
(stats, log), keeps serving what was fetched, and tries again at each reconnect and every `_RETRY_S` seconds.
The buckets are reached under `registry.api_prefix`.

At an edge site the buckets are mirrors of the hub's, read the same way; the follower also reads how they stand
every `_MIRROR_POLL_S` (stats: `registry.mirror`) and logs when they stop hearing from the hub, and when they hear
from it again. The two mirrors catch up on their own after an outage, the index's maybe before the archives': an
automatic load that finds no archive at a site is tried again each time the archive mirror grows, after a restart
too (what is owed is saved with the index, `Releases.owe_load`). A request may
load that version first; the automatic load then finds it loaded, and announces it all the same (`published`,
`cold` false): each loader with `auto_update` announces each newly published latest once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client

from ..contract.config import RegistryConfig
from ..contract.errors import LoaderError
from ..contract.messages import Event, MirrorStats
from ..core.manager import ExtensionManager
from ..core.releases import Changes, Releases
from ..core.version_info import VersionInfo
from ..core.versions import Constraint
from ..notify import Notifier
from ..registry.buckets import RegistryBuckets
from ..registry.errors import RegistryUnavailable
from ..registry.index_bucket import Update
from ..registry.names import BucketNames
from .events import EventPublisher

log = logging.getLogger(__name__)

_RETRY_S = 5.0  # between attempts while the buckets cannot be opened
_INDEX_TIMEOUT_S = 5.0  # a call on the index: the bound that keeps an offline loader from stalling
_MIRROR_POLL_S = 1.0  # how often an edge site's mirrors are looked at


class RegistryFollower:
    def __init__(
        self,
        config: RegistryConfig,
        manager: ExtensionManager,
        releases: Releases,
        *,
        client: Callable[[], Client],
        publisher: Callable[[], EventPublisher],
        connection_changes: Callable[[], int],
        changed: Notifier,
    ) -> None:
        """`connection_changes`: how many disconnects and reconnects there have been; `changed`: notified at
        the next one."""
        self.config = config
        self.manager = manager
        self.releases = releases
        self._client = client
        self._publisher = publisher
        self._connection_changes = connection_changes
        self._changed = changed
        self.updates = 0  # index updates applied (for tests and tools)
        self._access = releases.access  # what the follower says of the registry, for fetches and stats to read
        self._updated = Notifier()
        self._unreachable_said = False
        self._settings_checked = False
        self._hub_heard: bool | None = None  # at an edge site: whether its mirrors heard from the hub, last look
        self._looked = Notifier()  # notified at each look at an edge site's mirrors
        self._archives_seen = 0  # the archive mirror's last sequence at the look before

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follows the index until cancelled. Reports started once the index was read, or could not be. With
        `registry.max_age_s`, also looks at how old the view is now and then, so that a view that goes stale while
        nothing happens is logged when it does."""
        async with anyio.create_task_group() as tg:
            if self.config.max_age_s > 0:
                tg.start_soon(self._look_at_freshness)
            await self._run(task_status)
            tg.cancel_scope.cancel()

    async def _look_at_freshness(self) -> None:
        while True:
            self.releases.freshness()  # logs a change
            await anyio.sleep(min(self.config.max_age_s / 4, 60.0))

    async def _run(self, task_status: TaskStatus[None]) -> None:
        started: list[bool] = []

        def ready() -> None:
            if not started:
                started.append(True)
                task_status.started()

        while True:
            seen = self._connection_changes()
            applied, broke = self.updates, False
            try:
                await self._follow(seen, ready)
            except RegistryUnavailable as exc:
                broke = self.updates > applied and self._client().is_connected
                if broke:
                    # The watch worked, then broke while the connection holds (its consumer was deleted, or the
                    # server holding it stopped): a new one starts at once, and fetches go on meanwhile with
                    # the buckets as they are. Only if that one fails is the registry unreachable.
                    log.info("registry: the index watch ended (%s); starting a new one", exc)
                else:
                    self._unreachable(str(exc))
            except Exception as exc:  # a defect here must not take the requests down with it
                log.exception("registry: following the index failed; starting again")
                self._unreachable(f"internal error ({type(exc).__name__}); see the service log")
            ready()
            if broke:
                continue  # start it again at once
            with anyio.move_on_after(_RETRY_S):
                await self._changed.wait_until(lambda: self._connection_changes() != seen)  # noqa: B023 (awaited here)

    async def wait_updates(self, count: int) -> None:
        """Returns once that many index updates have been applied (for tests and tools)."""
        await self._updated.wait_until(lambda: self.updates >= count)

    async def wait_mirrors(self, condition: Callable[[MirrorStats], bool]) -> MirrorStats:
        """An edge site's mirror statistics, once a look at the mirrors finds them as `condition` wants them (for
        tests and tools)."""
        found: list[MirrorStats] = []

        def holds() -> bool:
            stats = self._access.mirror_stats()
            found[:] = [stats] if stats is not None else []
            return stats is not None and condition(stats)

        await self._looked.wait_until(holds)
        return found[0]

    async def _follow(self, seen: int, ready: Callable[[], None]) -> None:
        nc = self._client()
        if not nc.is_connected:
            raise RegistryUnavailable("not connected to NATS")
        names = BucketNames(index=self.config.index_bucket, archives=self.config.archive_bucket)
        timeout_s = min(_INDEX_TIMEOUT_S, self.config.timeout_s)
        buckets = RegistryBuckets(nc, names, timeout_s=timeout_s, api_prefix=self.config.api_prefix)
        await buckets.open()
        if not self._settings_checked:  # the first time only, not at every reconnect
            for problem in await buckets.problems():
                log.warning("registry: %s", problem)
            self._settings_checked = True
        self._access.opened(buckets)
        ended: RegistryUnavailable | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._stop_on_change, seen, tg.cancel_scope)
            tg.start_soon(self._look_at_mirrors, buckets)
            try:
                await self._watch(buckets, ready)
            except RegistryUnavailable as exc:  # raised out of the task group, it would come in an exception group
                ended = exc
            tg.cancel_scope.cancel()
        if ended is not None:
            raise ended

    async def _watch(self, buckets: RegistryBuckets, ready: Callable[[], None]) -> None:
        current: list[tuple[str, bytes | None]] = []
        caught_up = False
        async with contextlib.aclosing(buckets.index.watch()) as updates:
            async for item in updates:
                if not isinstance(item, Update):  # caught up: the whole index has been read
                    caught_up = True
                    changes = self.releases.replace(current)
                    self._reachable()
                    ready()  # the service takes requests from here on; what changed is loaded meanwhile
                    await self._apply(changes)
                elif caught_up:
                    await self._apply(self.releases.apply(item.key, item.value))
                else:
                    current.append((item.key, item.value))
        raise RegistryUnavailable("the index watch ended")

    async def _stop_on_change(self, seen: int, scope: anyio.CancelScope) -> None:
        """A disconnect or reconnect ends this watch: the loop starts a fresh one once connected."""
        await self._changed.wait_until(lambda: self._connection_changes() != seen)
        if not self._client().is_connected:
            self._unreachable("disconnected from NATS")
        scope.cancel()

    async def _look_at_mirrors(self, buckets: RegistryBuckets) -> None:
        """At an edge site, reads how the mirrors stand while the watch runs; ends at once elsewhere. A look that
        fails is skipped: the reading before it ages in the statistics, and the watch says what is wrong."""
        while True:
            try:
                mirrors = await buckets.mirrors()
            except RegistryUnavailable:
                pass
            else:
                self._access.saw_mirrors(mirrors)
                if mirrors is None:
                    self._hub_heard = None
                    return
            stats = self._access.mirror_stats()
            if stats is not None and stats.hub_reachable != self._hub_heard:
                self._say_hub(stats.hub_reachable, stats.last_sequence, stats.heard_s, stats.error)
            # Once the index is followed: an owed load tried before (right after a restart) could not fetch.
            if stats is not None and stats.archives_last_sequence != self._archives_seen and self._access.reachable:
                self._archives_seen = stats.archives_last_sequence
                if self.releases.owes_loads():
                    events = await self._load_latest(self.releases.take_owed())
                    self.releases.save()  # what is still owed, for a restart
                    await self._announce(events)
            self._looked.notify()
            await anyio.sleep(_MIRROR_POLL_S)

    def _say_hub(self, heard: bool, sequence: int, heard_s: float | None, error: str | None) -> None:
        if heard:
            log.info("registry: this site's mirrors hear from the hub (index at sequence %d)", sequence)
        elif error is not None:
            log.warning(
                "registry: this site's mirrors: %s; serving what they hold (index at sequence %d)", error, sequence
            )
        else:
            log.warning(
                "registry: this site's mirrors do not hear from the hub (%s); serving what they hold (index at "
                "sequence %d); they catch up once the link is back, up to about 2 minutes after a long outage",
                "never heard from it" if heard_s is None else f"no word from it for {heard_s:.0f} s",
                sequence,
            )
        self._hub_heard = heard

    def _reachable(self) -> None:
        if not self._access.reachable:
            extensions, versions = self.releases.counts()
            log.info("registry: following the index (%d extensions, %d versions)", extensions, versions)
        self._access.following()
        self._unreachable_said = False

    def _unreachable(self, why: str) -> None:
        self._access.lost(why)
        if not self._unreachable_said:
            self._unreachable_said = True
            log.warning("registry unreachable (%s): serving what was fetched; loads of anything else fail", why)

    async def _apply(self, changes: Changes) -> None:
        events = await self.events_for(changes)
        if changes:
            self.releases.save()  # after the automatic loads: with what they still owe
        self.updates += 1
        self._updated.notify()
        await self._announce(events)

    async def _announce(self, events: list[Event]) -> None:
        if events:
            await self._publisher().publish(events)

    async def events_for(self, changes: Changes) -> list[Event]:
        """What a change of the index means for this cache: yanked and withdrawn versions leave it; with
        auto_update, what became the latest is loaded. At the first reading of the index by a loader that
        never read it before, nothing counts as newly published."""
        manager, auto_update = self.manager, self.config.auto_update
        events: list[Event] = []
        for info in changes.yanked:
            if self._on_disk(info):
                continue  # the disk's copy of that version is the one served, and it was not yanked
            events += manager.unload(info.extension_type, info.name, info.version, "yanked", announce=auto_update)
        for info in changes.withdrawn:
            events += manager.unload(info.extension_type, info.name, info.version, "removed")
        if auto_update and not changes.first_reading:
            events += await self._load_latest(changes.published + changes.restored)
        return events

    def _on_disk(self, info: VersionInfo) -> bool:
        try:
            served = self.manager.store.versions(info.extension_type, info.name).get(info.version)
        except LoaderError:
            return False
        return served is not None and served.source == "disk"

    async def _load_latest(self, candidates: Sequence[VersionInfo]) -> list[Event]:
        events: list[Event] = []
        names = {(info.extension_type, info.name) for info in candidates}
        new = {info.key for info in candidates}
        for extension_type, name in sorted(names):
            try:
                latest = self.manager.store.resolve(extension_type, name, Constraint.parse(None))
            except LoaderError:
                continue
            if latest.key not in new or latest.source != "registry":
                continue  # what is newly published is not the latest (or the disk's copy wins)
            began = time.perf_counter()
            try:
                result = await self.manager.load(extension_type, name, latest.version, reason="published")
            except LoaderError as exc:
                # At an edge site the index's mirror may run ahead of the archives': tried again as they catch up.
                later = exc.code == "unavailable" and self._access.mirror_stats() is not None
                if later:
                    self.releases.owe_load(latest.key)
                again = "; trying again as this site's archive mirror catches up" if later else ""
                log.warning(
                    "auto_update: %s was published but does not load (%s): %s%s", latest.key, exc.code, exc, again
                )
                continue
            if result.cold:
                events += result.events
            else:
                # A request loaded it first (at a site, between the index mirror and the archive mirror), or this
                # load joined that request's run: the request's event says `load`; this one says what `published`
                # promises, that the new latest is loaded here, once.
                waited_ms = (time.perf_counter() - began) * 1000
                events.append(self.manager.events.loaded(result.extension, "published", waited_ms, cold=False))
        return events
