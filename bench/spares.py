"""The spare Nushell processes' phases: the service's memory with its spares waiting, and a burst of different
cold loads to a service with spares against one without."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client

from .options import BenchError, Options
from .procs import Child, cpu_floor, memory_kb, reaped_children_cpu_seconds, shared_memory_kb
from .services import (
    HEADERS,
    REQUEST_TIMEOUT_S,
    SERVICE_MARKER,
    expected_spares,
    start_service,
    wait_for_spares,
    wait_ready,
)
from .tree import generate_tree


async def spare_memory_phase(pid: int, options: Options) -> dict[str, Any]:
    """The service's RSS with its spares waiting idle, and the spares' own beside it (Pss: their share of the
    pages they map, most of them the `nu` binary's, which every Nushell process shares)."""
    count = expected_spares(options)
    spares = await wait_for_spares(pid, count) if count else []
    service_kb = memory_kb(pid)
    each = [{"pid": p, **memory_kb(p), **shared_memory_kb(p)} for p in spares]
    return {
        "spares": count,
        "service_kb": service_kb,
        "service_mb": round(service_kb.get("VmRSS", 0) / 1024, 1),
        "spare_processes": each,
        "spares_rss_mb": round(sum(s.get("VmRSS", 0) for s in each) / 1024, 1),
        "spares_pss_mb": round(sum(s.get("Pss", 0) for s in each) / 1024, 1),
    }


async def burst_phase(
    nc: Client, url: str, options: Options, work: Path, logs: Path, children: list[Child]
) -> dict[str, Any]:
    """`burst` different cold loads sent at once (after `extensions.cache.clear`), to a service with its spares
    and to one with `nushell.spares=0` (what the runner did before spares), on one generated tree, interleaved:
    the total time until the last reply."""
    sizes = options.sizes
    tree = work / "burst-tree"
    generate_tree(tree, sizes.burst, 1)
    # Two services on one NATS server: each under a subject prefix of its own.
    prefixes = {"spares": "burst-spares", "no_spares": "burst-none"}
    extra = {"spares": (), "no_spares": ("nushell.spares=0",)}
    services = {
        name: replace(options, service_sets=(*options.service_sets, f"nats.subject_prefix={prefix}", *extra[name]))
        for name, prefix in prefixes.items()
    }
    started: dict[str, tuple[Child, int]] = {}
    for name, opts in services.items():
        child = start_service(children, opts, url, work / f"data-burst-{name}", [tree], logs / f"burst-{name}.log")
        await wait_ready(nc, f"{prefixes[name]}.stats", child)
        started[name] = (child, child.main_pid(SERVICE_MARKER))
    bodies = [
        msgspec.json.encode({"extension_type": "taskserv", "name": f"ext-{i:04d}", "version": "1.0.0"})
        for i in range(sizes.burst)
    ]
    walls: dict[str, list[float]] = {name: [] for name in services}
    nushell_cpu: dict[str, list[float]] = {name: [] for name in services}
    for rep in range(sizes.burst_repetitions):
        for name in list(services) if rep % 2 == 0 else list(reversed(services)):
            prefix = prefixes[name]
            pid = started[name][1]
            count = expected_spares(services[name])
            if count:
                await wait_for_spares(pid, count)  # the last burst's replacements are ready
            await _burst_call(nc, prefix, "cache.clear")
            before = await _burst_call(nc, prefix, "stats")
            cpu_before = reaped_children_cpu_seconds(pid)
            began = time.perf_counter_ns()
            replies = await asyncio.gather(
                *(nc.request(f"{prefix}.load", body, timeout=REQUEST_TIMEOUT_S, headers=HEADERS) for body in bodies)
            )
            wall_ms = (time.perf_counter_ns() - began) / 1e6
            nushell_cpu[name].append(reaped_children_cpu_seconds(pid) - cpu_before)
            failed = [r.data[:200] for r in replies if msgspec.json.decode(r.data).get("success") is not True]
            after = await _burst_call(nc, prefix, "stats")
            cold = after["loads"]["cold"] - before["loads"]["cold"]
            if failed or cold != sizes.burst:
                raise BenchError(f"burst on {name}: {cold} cold loads of {sizes.burst}; failures {failed[:3]}")
            walls[name].append(round(wall_ms, 3))
    for child, _ in started.values():
        child.stop()
    p50 = {name: statistics.median(values) for name, values in walls.items()}
    return {
        "loads": sizes.burst,
        "repetitions": sizes.burst_repetitions,
        "spares": expected_spares(services["spares"]),
        "spares_wall_ms": walls["spares"],
        "no_spares_wall_ms": walls["no_spares"],
        "spares_p50_ms": round(p50["spares"], 3),
        "no_spares_p50_ms": round(p50["no_spares"], 3),
        "ratio": round(p50["spares"] / p50["no_spares"], 3) if p50["no_spares"] else 0.0,
        "spares_cpu": cpu_floor(nushell_cpu["spares"]),
        "no_spares_cpu": cpu_floor(nushell_cpu["no_spares"]),
    }


async def _burst_call(nc: Client, prefix: str, suffix: str) -> Any:
    reply = await nc.request(f"{prefix}.{suffix}", b"{}", timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
    envelope = msgspec.json.decode(reply.data)
    if not envelope.get("success"):
        raise BenchError(f"{prefix}.{suffix}: {envelope.get('error')}")
    return envelope.get("data")
