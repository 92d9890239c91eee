"""What the edge benchmarks watch at the site: the loaders' announcements, and the versions arriving in the site's
mirror of the index.

`Announcements` keeps every `extensions.loaded` the site's client hears (when, which instance, why, which version
and digest) and can wait for one. `MirrorArrivals` follows the site's index mirror with the registry's own watch
(a pull consumer, as the loaders follow it), as the site's admin, and keeps when each version was first seen there:
what tells a version a restarted loader never had the chance to announce (another version of the same extension
arrived while it was down) from one it missed. `MirrorStaleness` times how long each of the site's mirrors took to
hold what the hub held, looking at both sides every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class MirrorStaleness:
    """How far behind the hub each of the site's mirrors was, looked at every `every_s`: each last sequence seen at
    the hub is timed until the site's mirror holds it (`run`, as each side's admin, until cancelled; a look that
    fails, a hub node being down, is skipped)."""

    def __init__(self, hub_admin: Client, site_admin: Client, streams: tuple[str, ...], every_s: float = 1.0) -> None:
        self.hub = hub_admin.jetstream(timeout=INDEX_TIMEOUT_S)
        self.site = site_admin.jetstream(timeout=INDEX_TIMEOUT_S)
        self.streams = streams
        self.every_s = every_s
        self._waiting: dict[str, list[tuple[int, float]]] = {stream: [] for stream in streams}
        self.delays_s: dict[str, list[float]] = {stream: [] for stream in streams}

    async def run(self) -> None:
        while True:
            for stream in self.streams:
                with contextlib.suppress(Exception):  # a look that fails is skipped
                    await self._look(stream)
            await asyncio.sleep(self.every_s)  # the pace of the looks

    async def _look(self, stream: str) -> None:
        hub = (await self.hub.stream_info(stream)).state.last_seq
        now = time.monotonic()
        waiting = self._waiting[stream]
        if not waiting or waiting[-1][0] < hub:
            waiting.append((hub, now))
        site = (await self.site.stream_info(stream)).state.last_seq
        now = time.monotonic()
        while waiting and waiting[0][0] <= site:
            self.delays_s[stream].append(now - waiting.pop(0)[1])

    def summary(self) -> dict[str, Any]:
        """Per stream: how many hub sequences were timed, the median and longest time until the site held each,
        and how long the oldest one still missing has waited."""
        now = time.monotonic()
        out: dict[str, Any] = {}
        for stream, delays in self.delays_s.items():
            ordered = sorted(delays)
            waiting = self._waiting[stream]
            out[stream] = {
                "timed": len(ordered),
                "p50_s": round(ordered[len(ordered) // 2], 1) if ordered else None,
                "max_s": round(ordered[-1], 1) if ordered else None,
                "still_missing_for_s": round(now - waiting[0][1], 1) if waiting else 0.0,
            }
        return out
