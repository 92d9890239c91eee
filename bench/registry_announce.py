"""registry_announce: how soon a version published on node 1 is announced by a loader on node 2.

The publisher on node 1, a loader with `registry.auto_update = true` on node 2; for each of `announce_versions`
new versions of one extension (each the new latest, prepared beforehand), the time from the start of `publish()`
to the arrival of that loader's `extensions.loaded` (reason `published`) at a subscriber on node 1, its spares
ready first. The floor, interleaved in the same run: a bare nats-py Key-Value put on node 1 (an R3 bucket of its
own) to the update arriving at a watch on node 2, `announce_floor_samples` before each publish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue

from service.app.publishing import Prepared, publish
from service.registry.buckets import RegistryBuckets

from .load import summary_ms
from .options import BenchError
from .services import REQUEST_TIMEOUT_S, wait_for_spares

NAME = "announced"  # the extension published again and again
FLOOR_BUCKET = "bench-floor"


async def measure(
    nc1: Client,
    nc2: Client,
    buckets: RegistryBuckets,
    versions: Sequence[Prepared],
    floor_samples: int,
    prefix: str,
    pid: int,
    spares: int,
) -> dict[str, Any]:
    """Publishes each of `versions` through `buckets` (on node 1), `floor_samples` of the floor before each, and
    times the announcement by the loader under `prefix` (pid `pid`, keeping `spares` spares) on node 2."""
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[tuple[int, float]]] = {}

    async def on_loaded(msg: Msg) -> None:
        arrived = time.perf_counter_ns()
        event = msgspec.json.decode(msg.data)
        version = event.get("extension", {}).get("metadata", {}).get("version")
        future = waiting.get(version)
        if event.get("reason") == "published" and future is not None and not future.done():
            future.set_result((arrived, float(event.get("duration_ms", 0.0))))

    sub = await nc1.subscribe(f"{prefix}.loaded", cb=on_loaded)
    await nc1.flush()
    floor = await _Floor.start(nc1, nc2)
    publish_ns: list[int] = []
    announce_ns: list[int] = []
    after_ns: list[int] = []
    runner_ms: list[float] = []
    floor_ns: list[int] = []
    try:
        for prepared in versions:
            for _ in range(floor_samples):
                floor_ns.append(await floor.sample())
            await wait_for_spares(pid, spares)
            version = prepared.release.version
            waiting[version] = loop.create_future()
            began = time.perf_counter_ns()
            await publish(buckets, prepared)
            published = time.perf_counter_ns()
            try:
                arrived, duration_ms = await asyncio.wait_for(waiting[version], REQUEST_TIMEOUT_S)
            except TimeoutError:
                raise BenchError(
                    f"{prefix}: no extensions.loaded (reason published) for {NAME} {version} within "
                    f"{REQUEST_TIMEOUT_S} s of its publish"
                ) from None
            publish_ns.append(published - began)
            announce_ns.append(arrived - began)
            after_ns.append(arrived - published)
            runner_ms.append(duration_ms)
    finally:
        await sub.unsubscribe()
        await floor.stop()
    return {
        "versions": len(versions),
        "replicas": 3,
        "announce": summary_ms(announce_ns),
        "publish": summary_ms(publish_ns),
        "after_publish": summary_ms(after_ns),
        "loader_load": summary_ms([int(ms * 1e6) for ms in runner_ms]),
        "floor_kv_put_to_watch": summary_ms(floor_ns),
        "floor_samples_per_version": floor_samples,
    }


class _Floor:
    """A bare nats-py Key-Value put on node 1 and the watch on node 2 that sees it."""

    def __init__(self, kv: KeyValue, watcher: KeyValue.KeyWatcher) -> None:
        self._kv = kv
        self._watcher = watcher
        self._count = 0

    @classmethod
    async def start(cls, nc1: Client, nc2: Client) -> _Floor:
        kv = await nc1.jetstream().create_key_value(
            bucket=FLOOR_BUCKET, history=1, replicas=3, storage=api.StorageType.FILE, direct=True
        )
        watcher = await (await nc2.jetstream().key_value(FLOOR_BUCKET)).watch("k")
        return cls(kv, watcher)

    async def sample(self) -> int:
        """Nanoseconds from a put on node 1 until the watch on node 2 has the value."""
        self._count += 1
        value = str(self._count).encode()
        began = time.perf_counter_ns()
        await self._kv.put("k", value)
        while True:
            entry = await self._watcher.updates(timeout=REQUEST_TIMEOUT_S)  # type: ignore[no-untyped-call]
            if entry is not None and entry.value == value:
                return time.perf_counter_ns() - began

    async def stop(self) -> None:
        await self._watcher.stop()  # type: ignore[no-untyped-call]
