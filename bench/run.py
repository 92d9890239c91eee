"""One benchmark run: nats-server, the echo responder and the service as subprocesses, driven from here.

This module starts the children, runs the phases, each bounded, in this order, and writes the result; the
module that holds each is named after it:

1. readiness (`services`): the echo responder answers `bench.echo.ping`, the service
   `$SRV.PING.extension-loader`;
2. memory (`cached`): the service's RSS when ready, then after one warm-up load and `rss_requests` cached loads;
3. cached loads (`cached`): `extensions.load` of taskserv kubernetes 1.28.0 (already cached) and the same bytes
   to the echo responder, closed loop at each level of requests in flight, `repetitions` times, echo and service
   interleaved; medians of rps, p50 and p99 per level;
4. cold loads (`cold`): `extensions.reload` in sequence, interleaved with `nu -n -c 1` (a bare Nushell start) and
   with the loader command run directly (plain, and under the service's prlimit), so service overhead and
   Nushell work are told apart;
5. simultaneous cold requests (`cold`): `extensions.cache.clear`, then `simultaneous` loads of one key at once,
   with `extensions.stats` before and after (one cold load, the rest coalesced or hits);
6. spare memory (`spares`): the service's RSS with its spare Nushell processes waiting, and theirs beside it;
7. dependencies (`cold`): `extensions.cache.clear`, then `load cluster ci-cd --with-dependencies` (nine
   extensions from an empty cache), against one cold load (the reload p50 of phase 4);
8. discovery (`tree`): the first service stops; a second one serves a generated tree of `tree_names` x
   `tree_versions`: the first `extensions.discover`, repeated ones, and cold loads of different names;
9. contention (`tree`): on that tree, a closed loop of cached loads while another client (`bench.churn`, a
   process of its own) sends discovers and cold reloads back to back;
10. burst (`spares`): `burst` different cold loads at once, to a service with its spares and to one with
   `nushell.spares=0`, on a generated tree of their own;
11. registry fetch (`bench.registry_fetch`, on a JetStream server of its own): one archive read by a bare pull
   consumer, by `fetch_archive` and by nats-py's `ObjectStore.get`;
12. tree check (`bench.tree_check`): a 10 MB archive and a small example unpacked, then the tree digest of each
   (what a cold load of a registry version checks), beside a bare sha256 of the same bytes;
13. durability (`bench.durability`, two JetStream servers of its own side by side, one with
   `sync_interval: always`, one with the default): Key-Value puts, awaited publishes and async publishes on each,
   in alternating rounds;
14. the registry on a cluster (`bench.registry_cluster`, three JetStream nodes of its own, loaders as children):
   a publish on node 1 until a loader on node 2 announces it (beside a bare Key-Value put on node 1 seen by a
   watch on node 2), and cold loads from the registry, their fetch included, against the same from disk;
15. the registry at an edge site (`bench.edge`, a three-node hub and a leaf-node site with mirrors, loaders as
   children): a publish at the hub until the site's loader announces it (beside a bare write at the hub seen
   through the site's mirror), cold loads at the site from its mirror against the same from disk, and the
   mirrors' catch-up after a cut of the link.

Then `targets` judges the figures and `report` renders them as Markdown. Timings are only reported here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats

from service.app.natsserver import NatsServer
from service.contract.config import NO_AUTH_USER, inbox_prefix_for

from . import durability, edge, registry_cluster, registry_fetch, tree_check
from .cached import cached_phase, rss_phase
from .cold import cold_phase, dependencies_phase, simultaneous_phase
from .machine import machine_info
from .options import EXAMPLES, FULL, NU, QUICK, RESULTS, ROOT, BenchError, Options
from .procs import Child, memory_kb
from .report import render_run
from .services import (
    ECHO_CT_SUBJECT,
    ECHO_SUBJECT,
    SERVICE_MARKER,
    SERVICE_PING,
    start_child,
    start_service,
    wait_ready,
)
from .spares import burst_phase, spare_memory_phase
from .targets import judge
from .tree import contention_phase, discovery_phase


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
    print(render_run(result))
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
    options.output.with_suffix(".md").write_text(render_run(result) + "\n")
    return result


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
    checked = work / "tree-check"
    checked.mkdir()
    out["tree_check"] = tree_check.measure(checked, size=sizes.tree_check_bytes, runs=sizes.tree_check_runs)
    out["durability"] = await durability.on_own_servers(
        work, rounds=sizes.durability_rounds, puts=sizes.durability_puts, publishes=sizes.durability_publishes
    )
    out.update(await registry_cluster.measure(options, work, logs))
    out.update(await edge.measure(options, work, logs))
    return out


def _pid(server: NatsServer) -> int:
    assert server.process is not None
    return server.process.pid


def quick(output: Path, log_dir: Path | None = None) -> dict[str, Any]:
    """The whole run at tiny sizes (the smoke test's entry)."""
    return run(replace(Options(), sizes=QUICK, output=output, log_dir=log_dir))
