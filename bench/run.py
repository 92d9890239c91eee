"""One benchmark run: nats-server, the echo responder and the service as subprocesses, driven from here.

Phases, in this order, each bounded:

1. readiness: the echo responder answers `bench.echo.ping`, the service `$SRV.PING.extension-loader`;
2. memory: the service's RSS when ready, then after one warm-up load and `rss_requests` cached loads;
3. cached loads: `extensions.load` of taskserv kubernetes 1.28.0 (already cached) and the same bytes to the echo
   responder, closed loop at each level of requests in flight, `repetitions` times, echo and service
   interleaved; medians of rps, p50 and p99 per level;
4. cold loads: `extensions.reload` in sequence, interleaved with `nu -n -c 1` (a bare Nushell start) and with
   the loader command run directly (plain, and under the service's prlimit), so service overhead and Nushell
   work are told apart;
5. simultaneous cold requests: `extensions.cache.clear`, then `simultaneous` loads of one key at once, with
   `extensions.stats` before and after (one cold load, the rest coalesced or hits);
6. dependencies: `extensions.cache.clear`, then `load cluster ci-cd --with-dependencies` (nine extensions from
   an empty cache), against one cold load (the reload p50 of phase 4);
7. discovery: the first service stops; a second one serves a generated tree of `tree_names` x
   `tree_versions`: the first `extensions.discover`, repeated ones, and cold loads of different names;
8. contention: on that tree, a closed loop of cached loads while another client (`bench.churn`, a process of
   its own) sends discovers and cold reloads back to back;
9. registry fetch (`bench.registry_fetch`, on a JetStream server of its own): one archive read by a bare pull
   consumer, by `fetch_archive` and by nats-py's `ObjectStore.get`;
10. the registry on a cluster (`bench.registry_cluster`, three JetStream nodes of its own, loaders as children):
   a publish on node 1 until a loader on node 2 announces it (beside a bare Key-Value put on node 1 seen by a
   watch on node 2), and cold loads from the registry, their fetch included, against the same from disk.

Timings are only reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from service.app.natsserver import NatsServer, nats_server_binary
from service.contract.config import NO_AUTH_USER, inbox_prefix_for

from . import churn, registry_cluster, registry_fetch
from .load import RunStats, closed_loop, medians, summary_ms
from .options import EXAMPLES, FULL, NU, QUICK, RESULTS, ROOT, SERVICE_SOURCE, BenchError, Options, Sizes
from .procs import (
    Child,
    cpu_seconds,
    memory_kb,
    reaped_children_cpu_seconds,
    shared_memory_kb,
)
from .report import judge, render
from .services import (
    ECHO_CT_SUBJECT,
    ECHO_SUBJECT,
    HEADERS,
    LOAD,
    PREFIX,
    READY_WITHIN_S,
    REQUEST_TIMEOUT_S,
    SERVICE_MARKER,
    SERVICE_PING,
    call,
    expected_spares,
    start_child,
    start_service,
    wait_for_spares,
    wait_ready,
)

MODULE = SERVICE_SOURCE / "runtime" / "nushell" / "provisioning.nu"
# The limits the service's runner puts on a Nushell run with the default configuration (service/runtime/sandbox.py).
PRLIMIT = ["--as=536870912", "--cpu=30", "--fsize=67108864", "--nofile=1024", "--core=0", "--"]


# --- entry ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery, measures nothing")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file (default: {RESULTS.relative_to(ROOT)})")
    p.add_argument("--nu", type=Path, default=NU, help="the Nushell binary")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a service setting")
    p.add_argument(
        "--wrap",
        default="",
        help="run the service under this command; {name} is the instance, e.g. 'py-spy record -o {name}.txt --'",
    )
    p.add_argument("--log-dir", type=Path, help="the children's logs (default: logs/ beside the JSON)")
    args = p.parse_args(argv)
    options = Options(
        sizes=QUICK if args.quick else FULL,
        output=args.output,
        nu=args.nu,
        service_sets=tuple(args.set),
        wrap=tuple(shlex.split(args.wrap)),
        log_dir=args.log_dir,
    )
    try:
        result = run(options)
    except BenchError as exc:
        print(
            f"bench: {exc}\n(the children's logs: {options.log_dir or options.output.parent / 'logs'})", file=sys.stderr
        )
        return 1
    print(report(result))
    print(f"\nJSON: {options.output}")
    return 0


def run(options: Options) -> dict[str, Any]:
    """Runs every phase, writes the JSON (and the table beside it, `.md`) and returns the result."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="extension-loader-bench-") as tmp:
        work = Path(tmp)
        logs = options.log_dir or options.output.parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
            "machine": machine_info(options.nu),
            "mode": "quick" if options.sizes == QUICK else "full" if options.sizes == FULL else "custom",
            "sizes": asdict(options.sizes),
            "service_settings": list(options.service_sets),
            "service_wrapper": list(options.wrap),
        }
        result.update(asyncio.run(_measure(options, work, logs)))
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["duration_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = [v.as_dict() for v in judge(result)]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    options.output.with_suffix(".md").write_text(report(result) + "\n")
    return result


def report(result: dict[str, Any]) -> str:
    """The table and figures of `report.render`, then the registry fetch's."""
    parts = [render(result)]
    if "registry_fetch" in result:
        parts.append(registry_fetch.render(result["registry_fetch"]))
    return "\n\n".join(parts)


# --- the run --------------------------------------------------------------------------------------------------


async def _measure(options: Options, work: Path, logs: Path) -> dict[str, Any]:
    sizes = options.sizes
    out: dict[str, Any] = {}
    children: list[Child] = []
    server = NatsServer(["-a", "127.0.0.1", "-p", "-1"]).start()
    try:
        echo = start_child(children, "echo", [sys.executable, "-m", "bench.echo", server.url, ECHO_SUBJECT], logs)
        echo_ct = start_child(
            children,
            "echo-ct",
            [sys.executable, "-m", "bench.echo", server.url, ECHO_CT_SUBJECT, "--content-type"],
            logs,
        )
        svc = start_service(children, options, server.url, work / "data", [EXAMPLES], logs / "service.log")
        nc = await nats.connect(
            server.url,
            name="bench-client",
            max_reconnect_attempts=0,
            allow_reconnect=False,
            inbox_prefix=inbox_prefix_for(NO_AUTH_USER),  # a requester's, as nats.conf would want it
        )
        try:
            out["startup"] = {
                "echo_ready_s": await wait_ready(nc, f"{ECHO_SUBJECT}.ping", echo),
                "echo_ct_ready_s": await wait_ready(nc, f"{ECHO_CT_SUBJECT}.ping", echo_ct),
                "service_ready_s": await wait_ready(nc, SERVICE_PING, svc),
            }
            pid = svc.main_pid(SERVICE_MARKER)
            out["rss"] = await rss_phase(nc, pid, sizes)
            pids = {
                "echo": echo.pid,
                "echo_ct": echo_ct.pid,
                "service": pid,
                "nats_server": _pid(server),
                "client": os.getpid(),
            }
            out["cached"] = await cached_phase(nc, sizes, pids)
            out["cold"] = await cold_phase(nc, options, work)
            out["simultaneous"] = await simultaneous_phase(nc, sizes)
            out["spare_memory"] = await spare_memory_phase(pid, options)
            out["dependencies"] = await dependencies_phase(nc, sizes, out["cold"]["service_reload"]["p50_ms"], pid)
            out["rss"]["end_kb"] = memory_kb(pid)
            svc.stop()
            out["discovery"] = await discovery_phase(nc, server.url, options, work, logs, children)
            out["contention"] = await contention_phase(nc, server.url, sizes, logs, children)
            out["burst"] = await burst_phase(nc, server.url, options, work, logs, children)
        finally:
            await nc.close()
    finally:
        for child in reversed(children):
            child.stop()
        server.stop()
    out["registry_fetch"] = await registry_fetch.on_own_server(
        work, size=sizes.registry_bytes, runs=sizes.registry_runs
    )
    out.update(await registry_cluster.measure(options, work, logs))
    return out


def _pid(server: NatsServer) -> int:
    assert server.process is not None
    return server.process.pid


# --- phases ---------------------------------------------------------------------------------------------------


async def rss_phase(nc: Client, pid: int, sizes: Sizes) -> dict[str, Any]:
    ready = memory_kb(pid)
    await call(nc, "load", LOAD)  # the one cold load; every load after it is a cache hit
    run = await closed_loop(
        nc,
        f"{PREFIX}.load",
        msgspec.json.encode(LOAD),
        headers=HEADERS,
        in_flight=sizes.rss_in_flight,
        max_requests=sizes.rss_requests,
        duration_s=600.0,
    )
    after = memory_kb(pid)
    return {
        "pid": pid,
        "ready_kb": ready,
        "requests": run.completed,
        "errors": run.errors,
        "after_requests_kb": after,
        "after_requests_mb": round(after.get("VmRSS", 0) / 1024, 1),
    }


async def cached_phase(nc: Client, sizes: Sizes, pids: dict[str, int]) -> dict[str, Any]:
    """Echo and service at each level; beside the client's figures, the CPU time each process used per request
    (from /proc), which tells a responder that is the bottleneck from a client or a machine that is."""
    payload = msgspec.json.encode(LOAD)
    # echo_ct: the echo responder whose replies carry the Content-Type header the contract requires of the
    # service's; a diagnostic (the targets are judged against the bare echo).
    subjects = {"echo": ECHO_SUBJECT, "echo_ct": ECHO_CT_SUBJECT, "service": f"{PREFIX}.load"}
    runs: dict[str, dict[int, list[RunStats]]] = {t: {n: [] for n in sizes.levels} for t in subjects}
    cpu: dict[str, dict[int, list[dict[str, float]]]] = {t: {n: [] for n in sizes.levels} for t in subjects}

    async def one(target: str, in_flight: int, max_requests: int, seconds: float) -> RunStats:
        return await closed_loop(
            nc,
            subjects[target],
            payload,
            headers=HEADERS,
            in_flight=in_flight,
            max_requests=max_requests,
            duration_s=seconds,
        )

    for target in subjects:  # warm-up, not counted
        await one(target, 16, sizes.warmup_requests, sizes.run_seconds)
    for rep in range(sizes.repetitions):
        order = list(subjects) if rep % 2 == 0 else list(reversed(subjects))
        for level in sizes.levels:
            for target in order:
                watched = {"responder": pids[target], "client": pids["client"], "nats_server": pids["nats_server"]}
                before = {k: cpu_seconds(p) for k, p in watched.items()}
                stats = await one(target, level, sizes.run_max_requests, sizes.run_seconds)
                used = {k: cpu_seconds(p) - before[k] for k, p in watched.items()}
                runs[target][level].append(stats)
                cpu[target][level].append(
                    {
                        **{
                            f"{k}_cpu_us_per_request": round(v * 1e6 / max(1, stats.completed), 1)
                            for k, v in used.items()
                        },
                        **{f"{k}_cpu_share": round(v / stats.elapsed_s, 2) for k, v in used.items()},
                    }
                )
    levels = []
    for level in sizes.levels:
        entry: dict[str, Any] = {"in_flight": level}
        for target in subjects:
            samples = cpu[target][level]
            entry[target] = {
                **medians(runs[target][level]),
                **{k: round(statistics.median(c[k] for c in samples), 2) for k in samples[0]},
                "runs": [{**r.as_dict(), **c} for r, c in zip(runs[target][level], samples, strict=True)],
            }
        echo_rps = entry["echo"]["rps"]
        entry["ratio"] = round(entry["service"]["rps"] / echo_rps, 3) if echo_rps else 0.0
        echo_ct_rps = entry["echo_ct"]["rps"]
        entry["ratio_to_echo_ct"] = round(entry["service"]["rps"] / echo_ct_rps, 3) if echo_ct_rps else 0.0
        levels.append(entry)
    return {"request": LOAD, "payload_bytes": len(payload), "levels": levels}


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
    out.update(_cpu_floor(nushell_cpu))
    out["one_cold_load_ms"] = one_cold_ms
    out["ratio_to_cold_load"] = round(out["p50_ms"] / one_cold_ms, 2) if one_cold_ms else 0.0
    return out


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
        "spares_cpu": _cpu_floor(nushell_cpu["spares"]),
        "no_spares_cpu": _cpu_floor(nushell_cpu["no_spares"]),
    }


def _cpu_floor(seconds: Sequence[float]) -> dict[str, Any]:
    """The median CPU time the Nushell processes of a run used, and the least wall time that much CPU takes on
    this machine's cores: what no scheduling of those processes can go below. (Spares taken by the run count
    with what they used before it; replacements still waiting at its end do not.)"""
    cpus = os.cpu_count() or 1
    used_ms = statistics.median(seconds) * 1000 if seconds else 0.0
    return {"nushell_cpu_ms": round(used_ms, 1), "cpus": cpus, "cpu_floor_ms": round(used_ms / cpus, 1)}


async def _burst_call(nc: Client, prefix: str, suffix: str) -> Any:
    reply = await nc.request(f"{prefix}.{suffix}", b"{}", timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
    envelope = msgspec.json.decode(reply.data)
    if not envelope.get("success"):
        raise BenchError(f"{prefix}.{suffix}: {envelope.get('error')}")
    return envelope.get("data")


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


# --- the machine ----------------------------------------------------------------------------------------------


def machine_info(nu: Path) -> dict[str, Any]:
    def output(argv: Sequence[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout.decode().strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unknown ({exc})"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "service"])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_py": metadata.version("nats-py"),
        "nats_server": output([nats_server_binary(), "--version"]),
        "nu": output([str(nu), "--version"]),
        "git": f"{git}{' + uncommitted changes in service/' if dirty else ''}",
        "service_source": str(SERVICE_SOURCE),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def quick(output: Path, log_dir: Path | None = None) -> dict[str, Any]:
    """The whole run at tiny sizes (the smoke test's entry)."""
    return run(replace(Options(), sizes=QUICK, output=output, log_dir=log_dir))
