"""registry_cold_load: what a cold load from the registry costs beside a cold load of the same folder from disk.

Two loaders on node 2, one with an empty cache and no extension tree (`registry.enabled`), one with the same
folders on disk and no registry; `registry_cold_loads` distinct versions, each loaded once by each (a cold load,
the registry's with its archive never fetched before), interleaved, both loaders' spares ready before each load
(neither load meets the other's spare being started): the medians and their ratio.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from .load import summary_ms
from .options import BenchError
from .services import HEADERS, REQUEST_TIMEOUT_S, wait_for_all_spares

NAME = "cold"  # the extension loaded, on disk and in the registry


async def measure(
    nc: Client, count: int, prefixes: dict[str, str], pids: dict[str, int], spares: dict[str, int]
) -> dict[str, Any]:
    """Loads versions 2.0.0 .. 2.0.<count-1> of `NAME` once from each loader, "registry" and "disk" (their subject
    prefixes, pids and spares in the dictionaries), interleaved."""
    runner_ms: dict[str, list[float]] = {"registry": [], "disk": []}

    def on_loaded(which: str) -> Any:
        async def handle(msg: Msg) -> None:
            event = msgspec.json.decode(msg.data)
            if event.get("reason") == "load":
                runner_ms[which].append(float(event.get("duration_ms", 0.0)))

        return handle

    subs = [await nc.subscribe(f"{prefixes[w]}.loaded", cb=on_loaded(w)) for w in runner_ms]
    await nc.flush()
    samples: dict[str, list[int]] = {"registry": [], "disk": []}
    stats_before = await _stats(nc, prefixes["registry"])
    try:
        for i in range(count):
            body = msgspec.json.encode({"extension_type": "taskserv", "name": NAME, "version": f"2.0.{i}"})
            for which in ("registry", "disk") if i % 2 == 0 else ("disk", "registry"):
                await wait_for_all_spares({pids[w]: spares[w] for w in pids})
                began = time.perf_counter_ns()
                reply = await nc.request(f"{prefixes[which]}.load", body, timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
                elapsed = time.perf_counter_ns() - began
                envelope = msgspec.json.decode(reply.data)
                if not envelope.get("success"):
                    raise BenchError(f"{prefixes[which]}.load {NAME} 2.0.{i}: {envelope.get('error')}")
                samples[which].append(elapsed)
        await nc.flush()  # the last events arrive behind this round trip's PONG
    finally:
        for sub in subs:
            await sub.unsubscribe()
    stats_after = await _stats(nc, prefixes["registry"])
    fetched = stats_after["registry"]["fetched"] - stats_before["registry"]["fetched"]
    cold = stats_after["loads"]["cold"] - stats_before["loads"]["cold"]
    if fetched != count or cold != count:
        raise BenchError(f"the registry loader fetched {fetched} and loaded cold {cold} of {count} versions")
    out: dict[str, Any] = {"loads": count, "fetched": fetched}
    for which in samples:
        out[which] = summary_ms(samples[which])
        out[f"{which}_load"] = summary_ms([int(ms * 1e6) for ms in runner_ms[which]])
    disk_p50 = out["disk"]["p50_ms"]
    out["ratio"] = round(out["registry"]["p50_ms"] / disk_p50, 2) if disk_p50 else 0.0
    return out


async def _stats(nc: Client, prefix: str) -> Any:
    reply = await nc.request(f"{prefix}.stats", b"{}", timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
    envelope = msgspec.json.decode(reply.data)
    if not envelope.get("success"):
        raise BenchError(f"{prefix}.stats: {envelope.get('error')}")
    return envelope["data"]
