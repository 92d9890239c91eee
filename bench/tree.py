"""The phases on a generated tree of extensions: the tree itself, discovery on it (first, repeated, cold loads
of its names), and cached loads under contention with another client's discovers and reloads."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from . import churn
from .load import closed_loop, summary_ms
from .options import BenchError, Options, Sizes
from .procs import Child, memory_kb
from .services import (
    ECHO_SUBJECT,
    HEADERS,
    PREFIX,
    READY_WITHIN_S,
    SERVICE_MARKER,
    SERVICE_PING,
    call,
    start_child,
    start_service,
    wait_ready,
)


def generate_tree(root: Path, names: int, versions: int) -> None:
    """`taskservs/ext-0000 .. ext-<names-1>`, each with versions 1.0.0 .. 1.<versions-1>.0."""
    module = "export def check [] { {ok: true} }\n"
    for i in range(names):
        name = f"ext-{i:04d}"
        for v in range(versions):
            folder = root / "taskservs" / name / f"1.{v}.0"
            folder.mkdir(parents=True)
            (folder / "metadata.toml").write_text(
                f'name = "{name}"\nversion = "1.{v}.0"\ndescription = "generated extension {i}"\n'
                f'type = "taskserv"\ndependencies = []\n'
            )
            (folder / "mod.nu").write_text(module)


async def discovery_phase(
    nc: Client, url: str, options: Options, work: Path, logs: Path, children: list[Child]
) -> dict[str, Any]:
    sizes = options.sizes
    tree = work / "tree"
    began = time.perf_counter()
    generate_tree(tree, sizes.tree_names, sizes.tree_versions)
    generated_s = time.perf_counter() - began
    svc = start_service(children, options, url, work / "data-tree", [tree], logs / "tree.log")
    ready_s = await wait_ready(nc, SERVICE_PING, svc)
    pid = svc.main_pid(SERVICE_MARKER)

    async def discover() -> tuple[int, int, int]:
        began = time.perf_counter_ns()
        reply = await nc.request(f"{PREFIX}.discover", b"{}", timeout=120.0, headers=HEADERS)
        elapsed = time.perf_counter_ns() - began
        envelope = msgspec.json.decode(reply.data)
        if not envelope.get("success"):
            raise BenchError(f"{PREFIX}.discover on the generated tree: {envelope.get('error')}")
        return elapsed, len(envelope["data"]), len(reply.data)

    first_ns, found, reply_bytes = await discover()
    repeated = [(await discover())[0] for _ in range(sizes.discover_repeats)]
    step = max(1, sizes.tree_names // max(1, sizes.tree_cold_loads))
    names = [f"ext-{(i * step + 7) % sizes.tree_names:04d}" for i in range(sizes.tree_cold_loads)]
    loads: list[int] = []
    for name in names:
        began_ns = time.perf_counter_ns()
        await call(nc, "load", {"extension_type": "taskserv", "name": name})
        loads.append(time.perf_counter_ns() - began_ns)
    # How long does a cached load wait while a discover runs? The discovers' replies are not decoded here:
    # decoding 500 KB on this client's own event loop would hold up the probe's replies, not the service.
    probe = {"extension_type": "taskserv", "name": names[0]}
    probe_ns: list[int] = []
    discovering = True

    async def probe_loads() -> None:
        while discovering:
            began_ns = time.perf_counter_ns()
            await call(nc, "load", probe)
            probe_ns.append(time.perf_counter_ns() - began_ns)

    prober = asyncio.create_task(probe_loads())
    try:
        for _ in range(max(1, min(3, sizes.discover_repeats))):
            reply = await nc.request(f"{PREFIX}.discover", b"{}", timeout=120.0, headers=HEADERS)
            if not reply.data.startswith(b'{"success":true'):
                raise BenchError(f"{PREFIX}.discover on the generated tree: {reply.data[:300]!r}")
    finally:
        discovering = False
        await prober
    return {
        "names": sizes.tree_names,
        "versions": sizes.tree_versions,
        "generate_s": round(generated_s, 2),
        "service_ready_s": ready_s,
        "found": found,
        "reply_bytes": reply_bytes,
        "first_ms": round(first_ns / 1e6, 3),
        "repeated": summary_ms(repeated),
        "cold_load": summary_ms(loads),
        "cached_load_during_discover": summary_ms(probe_ns),
        "rss_kb": memory_kb(pid),
    }


async def contention_phase(nc: Client, url: str, sizes: Sizes, logs: Path, children: list[Child]) -> dict[str, Any]:
    """On the generated tree's service: cached loads of one extension, one in flight, for `contention_seconds`,
    while `bench.churn` sends a discover of the whole tree every `contention_discover_every_s` and reloads of
    other names back to back; then, under the same churn, the same loop against the echo responder: what the
    machine alone lets a bare responder do while the service works (Nushell keeps a CPU busy). The discovers
    come at a set pace, so that a faster service is not given more of them to do."""
    last = f"1.{sizes.tree_versions - 1}.0"
    probe = {"extension_type": "taskserv", "name": f"ext-{3 % sizes.tree_names:04d}", "version": last}
    payload = msgspec.json.encode(probe)
    await call(nc, "load", probe)  # the one cold load: from here on a cache hit
    reloaded = sorted({f"ext-{(sizes.tree_names * k) // 4 % sizes.tree_names:04d}" for k in range(4)} - {probe["name"]})
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_ready(msg: Msg) -> None:
        if not ready.done():
            ready.set_result(None)

    async def cached(subject: str) -> dict[str, float]:
        run = await closed_loop(
            nc,
            subject,
            payload,
            headers=HEADERS,
            in_flight=1,
            max_requests=10_000_000,
            duration_s=sizes.contention_seconds,
        )
        return {
            "n": run.completed,
            "errors": run.errors,
            "p50_ms": round(run.p50_us / 1000, 3),
            "p99_ms": round(run.p99_us / 1000, 3),
            "max_ms": round(run.max_us / 1000, 3),
        }

    sub = await nc.subscribe(churn.READY, cb=on_ready)
    await nc.flush()
    pace = ["--discover-every", str(sizes.contention_discover_every_s)]
    child = start_child(children, "churn", [sys.executable, "-m", "bench.churn", url, PREFIX, *reloaded, *pace], logs)
    try:
        began = time.perf_counter()
        while not ready.done():  # its readiness is a message; the child's exit, checked between waits, is not
            code = child.exited()
            if code is not None:
                raise BenchError(f"bench.churn exited with status {code}:\n{child.log_tail()}")
            if time.perf_counter() - began > READY_WITHIN_S:
                raise BenchError(f"bench.churn was not ready within {READY_WITHIN_S} s:\n{child.log_tail()}")
            await asyncio.wait({ready}, timeout=0.1)
        service_figures = await cached(f"{PREFIX}.load")
        echo_figures = await cached(ECHO_SUBJECT)
        reply = await nc.request(churn.STOP, b"", timeout=120.0)
        other = json.loads(reply.data)
    finally:
        await sub.unsubscribe()
        child.stop()
    return {
        "cached_request": probe,
        "reloaded": reloaded,
        "seconds": sizes.contention_seconds,
        "discover_every_s": sizes.contention_discover_every_s,
        "cached_load": service_figures,
        "echo_under_churn": echo_figures,
        "other_client": other,
    }
