"""What the edge benchmarks watch at the site: the loaders' announcements, and the versions arriving in the site's
mirror of the index.

`Announcements` keeps every `extensions.loaded` the site's client hears (when, which instance, why, which version
and digest) and can wait for one. `MirrorArrivals` follows the site's index mirror with the registry's own watch
(a pull consumer, as the loaders follow it), as the site's admin, and keeps when each version was first seen there:
what tells a version a restarted loader never had the chance to announce (another version of the same extension
arrived while it was down) from one it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from service.registry.buckets import RegistryBuckets
from service.registry.errors import RegistryUnavailable
from service.registry.index_bucket import Update

from .edge_registry import INDEX_TIMEOUT_S, record_versions
from .options import BenchError

RETRY_S = 0.5


@dataclass(frozen=True)
class Announcement:
    at: float  # monotonic, when it arrived here
    instance_id: str
    reason: str
    name: str
    version: str
    digest: str
    cold: bool
    duration_ms: float  # the loader's own time for the load


class Announcements:
    """Every `extensions.loaded` heard on `nc` (subscribed by `start`)."""

    def __init__(self) -> None:
        self.heard: list[Announcement] = []
        self._grew = asyncio.Event()

    async def start(self, nc: Client) -> None:
        await nc.subscribe("extensions.loaded", cb=self._on_loaded)
        await nc.flush()

    async def _on_loaded(self, msg: Msg) -> None:
        arrived = time.monotonic()
        try:
            event = msgspec.json.decode(msg.data)
            extension = event["extension"]
            metadata = extension["metadata"]
            self.heard.append(
                Announcement(
                    arrived,
                    str(event["instance_id"]),
                    str(event["reason"]),
                    str(metadata["name"]),
                    str(metadata["version"]),
                    str(extension["digest"]),
                    bool(event.get("cold")),
                    float(event.get("duration_ms") or 0.0),
                )
            )
        except (msgspec.DecodeError, KeyError, TypeError):
            return
        self._grew.set()

    async def wait_for(self, holds: Callable[[list[Announcement]], bool], within_s: float, what: str) -> float:
        """Returns once `holds(heard)`, with the seconds that took; BenchError after `within_s`."""
        began = time.monotonic()
        while not holds(self.heard):
            self._grew.clear()
            left = within_s - (time.monotonic() - began)
            if left <= 0:
                raise BenchError(f"not within {within_s} s: {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), left)
        return time.monotonic() - began


class MirrorArrivals:
    """When each (name, version) was first seen in the index mirror of `buckets` (the site's, opened by its admin);
    `run` follows it until cancelled, starting its watch again whenever it breaks."""

    def __init__(self, buckets: RegistryBuckets) -> None:
        self.buckets = buckets
        self.arrived: dict[tuple[str, str], float] = {}
        self.records = 0  # index updates seen
        self.restarts = 0
        self._grew = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self.buckets.index.watch()) as updates:
                    async for item in updates:
                        if isinstance(item, Update):
                            self._seen(item)
            except RegistryUnavailable:
                pass
            self.restarts += 1
            await asyncio.sleep(RETRY_S)  # a pace between attempts while the site's JetStream does not answer

    def _seen(self, update: Update) -> None:
        now = time.monotonic()
        self.records += 1
        name = update.key.partition(".")[2]
        for version in record_versions(update.value):
            self.arrived.setdefault((name, version), now)
        self._grew.set()

    async def wait_for(self, wanted: set[tuple[str, str]], within_s: float) -> float:
        """Returns once every one of `wanted` has arrived, with the seconds that took; BenchError after."""
        began = time.monotonic()
        while not wanted <= self.arrived.keys():
            self._grew.clear()
            left = within_s - (time.monotonic() - began)
            if left <= 0:
                missing = sorted(wanted - self.arrived.keys())
                raise BenchError(f"the site's mirror lacks {len(missing)} versions after {within_s} s: {missing[:5]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), min(left, INDEX_TIMEOUT_S))
        return time.monotonic() - began
