"""The writes a durability round times: on one JetStream server a Key-Value put, an awaited `js.publish` and
`publish_async` with every acknowledgement awaited (`Writer`); on the disk itself an append and `fsync`
(`bare_fsync`); and which filesystem holds a folder. `bench.durability` runs them on its two servers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from service.app.natsserver import NatsServer
from service.app.setup import set_up
from service.app.stream_settings import targets
from service.contract.config import load_config
from service.contract.headers import CONTENT_TYPE, JSON, MSG_ID
from service.contract.messages import ExtensionLoaded
from service.contract.subjects import EVENTS

from .load import percentile

VALUE_BYTES = 200  # about an index record
EVENT_BYTES = 300  # about an `extensions.loaded` event
LIMIT_S = 15.0  # each measurement of a round stops here, whatever its count


def filesystem(path: Path) -> str:
    """The type of the filesystem that holds `path` (the longest mount point above it), "" when unknown."""
    real, found, best = os.path.realpath(path), "", -1
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            found, best = fields[2], len(point)
    return found


class Writer:
    """One server's connection, its index bucket and its events subject, and the message counter."""

    def __init__(self, nc: Client, js: JetStreamContext, kv: KeyValue, subject: str, name: str) -> None:
        self.nc, self.js, self.kv, self.subject, self.name = nc, js, kv, subject, name
        self.sent = 0
        self.value = bytes(VALUE_BYTES)
        self.event = b"{" + b"e" * (EVENT_BYTES - 2) + b"}"

    def headers(self) -> dict[str, str]:
        self.sent += 1
        return {MSG_ID: f"bench-{self.name}-{self.sent}", CONTENT_TYPE: JSON}

    async def kv_put(self, count: int) -> dict[str, Any]:
        async def one(i: int) -> None:
            await self.kv.put(f"taskserv.durability-{i % 50}", self.value)

        return await timed(count, one)

    async def publish(self, count: int) -> dict[str, Any]:
        async def one(_: int) -> None:
            await self.js.publish(self.subject, self.event, timeout=5.0, headers=self.headers())

        return await timed(count, one)

    async def publish_async(self, count: int) -> dict[str, Any]:
        deadline = time.monotonic() + LIMIT_S
        began = time.perf_counter_ns()
        acks = []
        for _ in range(count):
            acks.append(await self.js.publish_async(self.subject, self.event, headers=self.headers()))
            if time.monotonic() > deadline:
                break
        await asyncio.wait_for(asyncio.gather(*acks), timeout=LIMIT_S + 10)
        total = time.perf_counter_ns() - began
        return {"n": len(acks), "total_ms": round(total / 1e6, 3)}


async def bare_fsync(folder: Path, count: int) -> dict[str, Any]:
    """`count` appends of VALUE_BYTES to a file in `folder`, each followed by `fsync`: what the disk asks."""
    fd = os.open(folder / "bench-fsync", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    value = bytes(VALUE_BYTES)

    async def one(_: int) -> None:
        os.write(fd, value)
        os.fsync(fd)

    try:
        return await timed(count, one)
    finally:
        os.close(fd)


async def timed(count: int, one: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    """`one(i)` for i in 0..count-1 in sequence (until LIMIT_S): the total and each call's p50, p90, p99, max."""
    deadline = time.monotonic() + LIMIT_S
    samples: list[int] = []
    began = time.perf_counter_ns()
    for i in range(count):
        start = time.perf_counter_ns()
        await one(i)
        samples.append(time.perf_counter_ns() - start)
        if time.monotonic() > deadline:
            break
    total = time.perf_counter_ns() - began
    values = sorted(s / 1e6 for s in samples)
    out: dict[str, Any] = {"n": len(values), "total_ms": round(total / 1e6, 3)}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(percentile(values, q), 3)
    out["max_ms"] = round(values[-1], 3) if values else 0.0
    return out


async def connect(server: NatsServer, name: str) -> Writer:
    """A writer on `server`, which is given the default configuration's events stream and registry buckets."""
    config = load_config(environ={})
    nc = await nats.connect(server.url, name=f"bench-durability-{name}", allow_reconnect=False)
    try:
        await set_up(nc, targets(config))  # the events stream and the registry's buckets, as `extension-loader setup`
        js = nc.jetstream(timeout=10.0)
        kv = await js.key_value(config.registry.index_bucket)
    except BaseException:
        await nc.close()
        raise
    loaded = next(e.suffix for e in EVENTS if e.event is ExtensionLoaded)
    return Writer(nc, js, kv, f"{config.nats.subject_prefix}.{loaded}", name)
