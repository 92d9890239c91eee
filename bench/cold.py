"""Cold loads: sequential reloads beside the same Nushell work run directly, simultaneous cold requests for one
key (single flight), and a load with its dependencies from an empty cache."""

from __future__ import annotations

import asyncio
import shlex
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from .load import summary_ms
from .options import EXAMPLES, SERVICE_SOURCE, BenchError, Options, Sizes
from .procs import cpu_floor, reaped_children_cpu_seconds
from .services import HEADERS, LOAD, PREFIX, REQUEST_TIMEOUT_S, call

MODULE = SERVICE_SOURCE / "runtime" / "nushell" / "provisioning.nu"
# The limits the service's runner puts on a Nushell run with the default configuration (service/runtime/sandbox.py).
PRLIMIT = ["--as=536870912", "--cpu=30", "--fsize=67108864", "--nofile=1024", "--core=0", "--"]


async def cold_phase(nc: Client, options: Options, work: Path) -> dict[str, Any]:
    """Sequential reloads, interleaved with the same Nushell work run directly, so that a reload's time splits
    into: a bare start, parsing the loader module, the loader's own work, the runner's process handling (the
    `duration_ms` of the `extensions.loaded` event against the direct run under prlimit) and the request path."""
    sizes = options.sizes
    home = work / "nu-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    loader_env = {
        **env,
        "PROVISIONING_EXTENSION_PATHS": str(EXAMPLES),
        "PROVISIONING_EXTENSION_CACHE": str(work / "direct-cache"),
    }
    nu = str(options.nu)
    module = [nu, "-n", "--no-std-lib", str(MODULE)]
    loader = [*module, "module", "load", "taskserv", "kubernetes", "--version", LOAD["version"], "--output", "json"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "bare_nu": ([nu, "-n", "-c", "1"], env),
        "bare_nu_no_std_lib": ([nu, "-n", "--no-std-lib", "-c", "1"], env),
        "loader_parse_only": (module, loader_env),  # no subcommand: parses the module, prints its usage
        "loader_direct": (loader, loader_env),
        "loader_direct_prlimit": (["prlimit", *PRLIMIT, *loader], loader_env),
    }
    samples: dict[str, list[int]] = {name: [] for name in [*commands, "service_reload"]}
    runner_ms: list[float] = []

    async def on_loaded(msg: Msg) -> None:
        event = msgspec.json.decode(msg.data)
        if event.get("reason") == "reload":
            runner_ms.append(float(event["duration_ms"]))

    for argv, cmd_env in commands.values():  # one warm-up each: page cache, the loader's cache folder
        _timed(argv, cmd_env, home)
    await call(nc, "reload", LOAD)
    sub = await nc.subscribe(f"{PREFIX}.loaded", cb=on_loaded)
    await nc.flush()
    for _ in range(max(sizes.cold_loads, sizes.bare_runs)):
        for name, (argv, cmd_env) in commands.items():
            if len(samples[name]) < sizes.bare_runs:
                samples[name].append(_timed(argv, cmd_env, home))
        if len(samples["service_reload"]) < sizes.cold_loads:
            began = time.perf_counter_ns()
            await call(nc, "reload", LOAD)
            samples["service_reload"].append(time.perf_counter_ns() - began)
    await nc.flush()  # the last events arrive behind this round trip's PONG
    await sub.unsubscribe()
    out: dict[str, Any] = {name: summary_ms(values) for name, values in samples.items()}
    out["runner"] = summary_ms([int(ms * 1e6) for ms in runner_ms])
    p50 = {name: float(out[name]["p50_ms"]) for name in out}
    out["ratio_to_bare_nu"] = round(p50["service_reload"] / p50["bare_nu"], 2) if p50["bare_nu"] else 0.0
    # Where a reload's time goes (medians subtracted from one another; the parts are approximate).
    out["breakdown_ms"] = {
        "nu_start": p50["bare_nu_no_std_lib"],
        "module_parse": round(p50["loader_parse_only"] - p50["bare_nu_no_std_lib"], 3),
        "loader_work": round(p50["loader_direct"] - p50["loader_parse_only"], 3),
        "prlimit": round(p50["loader_direct_prlimit"] - p50["loader_direct"], 3),
        "runner_process_handling": round(p50["runner"] - p50["loader_direct_prlimit"], 3) if runner_ms else None,
        "request_path": round(p50["service_reload"] - p50["runner"], 3) if runner_ms else None,
    }
    out["service_overhead_ms"] = round(p50["service_reload"] - p50["loader_direct_prlimit"], 3)
    return out


def _timed(argv: Sequence[str], env: dict[str, str], cwd: Path) -> int:
    began = time.perf_counter_ns()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    elapsed = time.perf_counter_ns() - began
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited with {done.returncode}: {done.stderr.decode()[-2000:]}")
    return elapsed


async def simultaneous_phase(nc: Client, sizes: Sizes) -> dict[str, Any]:
    payload = msgspec.json.encode(LOAD)
    reps: list[dict[str, Any]] = []
    for _ in range(sizes.simultaneous_repetitions):
        before = await call(nc, "stats")
        await call(nc, "cache.clear")
        began = time.perf_counter_ns()
        replies = await asyncio.gather(
            *(
                nc.request(f"{PREFIX}.load", payload, timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
                for _ in range(sizes.simultaneous)
            ),
            return_exceptions=True,
        )
        wall_ns = time.perf_counter_ns() - began
        after = await call(nc, "stats")
        ok = sum(
            1
            for r in replies
            if not isinstance(r, BaseException) and msgspec.json.decode(r.data).get("success") is True
        )
        cold = after["loads"]["cold"] - before["loads"]["cold"]
        coalesced = after["loads"]["coalesced"] - before["loads"]["coalesced"]
        hits = after["cache"]["hits"] - before["cache"]["hits"]
        reps.append(
            {
                "wall_ms": round(wall_ns / 1e6, 3),
                "succeeded": ok,
                "cold_delta": cold,
                "coalesced_delta": coalesced,
                "hits_delta": hits,
                "single_flight": cold == 1 and coalesced + hits == sizes.simultaneous - 1,
            }
        )
    return {
        "requests": sizes.simultaneous,
        "wall_ms_p50": round(statistics.median(r["wall_ms"] for r in reps), 3),
        "all_succeeded": all(r["succeeded"] == sizes.simultaneous for r in reps),
        "single_flight": all(r["single_flight"] for r in reps),
        "repetitions": reps,
    }


DEPENDENCIES = {"extension_type": "cluster", "name": "ci-cd", "with_dependencies": True}


async def dependencies_phase(nc: Client, sizes: Sizes, one_cold_ms: float, pid: int) -> dict[str, Any]:
    """`load cluster ci-cd --with-dependencies` from an empty cache, `dependency_loads` times; `one_cold_ms` is
    one cold load (the reload p50 of the cold phase), what the target compares it with. Beside each, the CPU
    time its Nushell processes used (the service `pid`'s reaped children)."""
    samples: list[int] = []
    cold: list[int] = []
    nushell_cpu: list[float] = []
    for _ in range(sizes.dependency_loads):
        await call(nc, "cache.clear")
        before = await call(nc, "stats")
        cpu_before = reaped_children_cpu_seconds(pid)
        began = time.perf_counter_ns()
        await call(nc, "load", DEPENDENCIES)
        samples.append(time.perf_counter_ns() - began)
        nushell_cpu.append(reaped_children_cpu_seconds(pid) - cpu_before)
        after = await call(nc, "stats")
        cold.append(after["loads"]["cold"] - before["loads"]["cold"])
    out: dict[str, Any] = {"request": DEPENDENCIES, "cold_loads": cold, **summary_ms(samples)}
    out.update(cpu_floor(nushell_cpu))
    out["one_cold_load_ms"] = one_cold_ms
    out["ratio_to_cold_load"] = round(out["p50_ms"] / one_cold_ms, 2) if one_cold_ms else 0.0
    return out
