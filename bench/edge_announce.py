"""edge_announce: how soon a version published at the hub is announced by a loader at the edge site, beside how
soon a bare write at the hub is seen through the site's mirror.

For each version (prepared beforehand, each the new latest of one extension), the time from the start of
`publish()` at the hub to the arrival, at a client at the site, of the site loader's `extensions.loaded` with
reason `published` (the loader fetched the archive from the site's mirror, unpacked, checked and loaded it first),
its spares ready before; and, from the same start, when the record reached the site's index mirror (a watch of it
as the site's admin). The floor, interleaved in the same run, `floor_samples` before each publish: one bare
JetStream write at the hub into the registry's archive stream (acknowledged by its three replicas; the loaders
never read it: it names no archive) until a watch on the site's mirror of that stream has it. The index and the
archives are mirrored alike, over the same leaf link.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client
from nats.js import api

from service.app.publishing import Prepared

from .edge_registry import Publisher
from .edge_site import ARCHIVES, REG_API
from .edge_watch import Announcements, MirrorArrivals
from .load import summary_ms
from .options import BenchError
from .services import wait_for_spares

FLOOR_SUBJECT = "$O.extension-archives.C.bench-edge-floor"  # a chunk subject no object's meta names
WITHIN_S = 30.0


async def measure(
    publisher: Publisher,
    hub_publisher: Client,
    site_admin: Client,
    heard: Announcements,
    arrivals: MirrorArrivals,
    versions: Sequence[Prepared],
    floor_samples: int,
    loader_pid: int,
    spares: int,
) -> dict[str, Any]:
    floor = await _Floor.start(hub_publisher, site_admin)
    announce_ns: list[int] = []
    publish_ns: list[int] = []
    mirrored_ns: list[int] = []
    floor_ns: list[int] = []
    try:
        for prepared in versions:
            for _ in range(floor_samples):
                floor_ns.append(await floor.sample())
            await wait_for_spares(loader_pid, spares)
            name, version = prepared.name, prepared.release.version
            began_at = time.monotonic()
            began = time.perf_counter_ns()
            await publisher.publish(prepared, WITHIN_S)
            publish_ns.append(time.perf_counter_ns() - began)
            await heard.wait_for(
                lambda heard: any(a.reason == "published" and (a.name, a.version) == (name, version) for a in heard),  # noqa: B023
                WITHIN_S,
                f"the site loader's announcement of {name} {version}",
            )
            announced = next(
                a.at for a in heard.heard if a.reason == "published" and (a.name, a.version) == (name, version)
            )
            announce_ns.append(int((announced - began_at) * 1e9))
            arrived = arrivals.arrived.get((name, version))
            if arrived is not None:
                mirrored_ns.append(int((arrived - began_at) * 1e9))
    finally:
        await floor.stop()
    return {
        "versions": len(versions),
        "announce": summary_ms(announce_ns),
        "publish": summary_ms(publish_ns),
        "record_at_site_mirror": summary_ms(mirrored_ns),
        "floor_write_to_site_mirror": summary_ms(floor_ns),
        "floor_samples_per_version": floor_samples,
    }


class _Floor:
    """One bare JetStream write at the hub (as its `publisher`, through REG's export) and the watch, at the site,
    of the mirror that copies it."""

    def __init__(self, hub: Client, subscription: Any) -> None:
        self._js = hub.jetstream(prefix=REG_API, timeout=WITHIN_S)
        self._subscription = subscription
        self._count = 0

    @classmethod
    async def start(cls, hub: Client, site_admin: Client) -> _Floor:
        watch = await site_admin.jetstream().subscribe(
            FLOOR_SUBJECT, stream=ARCHIVES, ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW
        )
        return cls(hub, watch)

    async def sample(self) -> int:
        """Nanoseconds from the write at the hub until the watch at the site has it."""
        self._count += 1
        value = f"floor {self._count}".encode()
        began = time.perf_counter_ns()
        await self._js.publish(FLOOR_SUBJECT, value)
        while True:
            try:
                msg = await self._subscription.next_msg(timeout=WITHIN_S)
            except TimeoutError:
                raise BenchError(f"the site's mirror did not have the floor's write within {WITHIN_S} s") from None
            if msg.data == value:
                return time.perf_counter_ns() - began

    async def stop(self) -> None:
        await self._subscription.unsubscribe()
