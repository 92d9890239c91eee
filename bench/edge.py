"""The registry at an edge site, measured beside its floors in one run (`python -m bench.edge [--quick]`, and the
last phase of `make bench`).

The deployment is `edge_site.py`'s: a hub of three clustered JetStream nodes (R3 buckets) and an edge site whose
registry is mirrors of the hub's, made by `setup --site`, from the shipped files over TLS. One loader at the site
(`auto_update = true`, no extension tree), and, for the floor of the cold loads, one loader with the same versions
on disk and no registry on a twin of the site (the site's file without its leaf link, `edge_site.write_twin`), so
that both are asked over the same kind of connection. Three measurements, each module named after its part:

- `edge_announce`: publish at the hub to `extensions.loaded` (published) from the site's loader, beside a bare
  write at the hub seen through the site's mirror;
- `edge_cold_load` (here): cold loads at the site, each archive fetched from the site's mirror, against cold
  loads of the same folders from disk, interleaved, both loaders' spares ready before each load;
- `edge_catch_up`: after a cut of the link during which the hub took N publishes, how long from the mend until
  the site's mirrors hold them all, and until the site's loader has announced the last.

Timings are reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client

from service.registry.buckets import RegistryBuckets

from . import edge_announce, edge_catch_up
from .edge_loaders import SiteLoader
from .edge_registry import KIND, Publisher, new_signer, publishing_config
from .edge_report import render_edge
from .edge_site import REG_API, Edge, Node, stop_all, write_twin
from .edge_watch import Announcements, MirrorArrivals
from .load import summary_ms
from .options import FULL, QUICK, RESULTS, BenchError, Options
from .procs import Child
from .services import HEADERS, REQUEST_TIMEOUT_S, expected_spares, wait_for_all_spares
from .targets import judge_edge

PUBLISH_WITHIN_S = 60.0


async def measure(options: Options, work: Path, logs: Path) -> dict[str, Any]:
    """The three measurements on one deployment; `{"edge": {...}}`."""
    sizes = options.sizes
    work = work / "edge-site"  # its own folder: `make bench`'s other phases share theirs
    work.mkdir()
    edge = Edge(work / "deployment")
    await asyncio.to_thread(edge.start)
    twin = Node(edge.folder, write_twin(edge.folder), edge.site.env)
    children: list[Child] = []
    clients: list[Client] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        await asyncio.to_thread(twin.start)
        await edge.set_up()
        await edge.set_up_node(twin)

        async def connect(urls: str | list[str], user: str, node: Node, name: str) -> Client:
            nc = await edge.connect(urls, user, node=node, name=name)
            clients.append(nc)
            return nc

        hub = edge.hub[0]
        signer = new_signer(work)
        tree = work / "edge-tree"
        hub_publisher = await connect(edge.hub_urls, "publisher", hub, "bench-edge-publisher")
        publisher = Publisher(
            hub_publisher,
            REG_API,
            signer,
            publishing_config(options, work),
            tree,
        )
        await publisher.open()
        prepare_ns: list[int] = []

        async def prepared(name: str, version: str) -> Any:
            began = time.perf_counter_ns()
            done = await publisher.prepare(name, version)
            prepare_ns.append(time.perf_counter_ns() - began)
            return done

        cold = [f"2.0.{i}" for i in range(sizes.edge_cold_loads)]
        for version in cold:  # published before any loader starts: none of them is announced or loaded ahead
            await publisher.publish(await prepared("edge-cold", version), PUBLISH_WITHIN_S)
        announced = [await prepared("edge-announced", f"1.0.{i}") for i in range(sizes.edge_announce_versions)]
        catch_up_rounds = []
        for r, hold_s in enumerate(sizes.edge_catch_up_holds_s):
            count = sizes.edge_catch_up_publishes
            catch_up_rounds.append((hold_s, [await prepared("edge-catch-up", f"3.{r}.{i}") for i in range(count)]))

        trusted = {
            "registry.enabled": "true",
            "registry.auto_update": "true",
            "registry.trusted": f'[{{key = "{signer.public_key}"}}]',
        }
        site_loader = SiteLoader("edge-site", edge.site, edge.ca, work, logs, options, registry=trusted)
        disk_loader = SiteLoader("edge-disk", twin, edge.ca, work, logs, options, roots=[tree])
        for loader in (site_loader, disk_loader):
            await loader.start(children)
        pids = {"site": site_loader.pid, "disk": disk_loader.pid}
        spares = expected_spares(options)

        site_client = await connect(edge.site.url, "orchestrator", edge.site, "bench-edge-client")
        twin_client = await connect(twin.url, "orchestrator", twin, "bench-edge-twin-client")
        site_admin = await connect(edge.site.url, "admin", edge.site, "bench-edge-site-admin")
        hub_admin = await connect(edge.hub_urls, "admin", hub, "bench-edge-hub-admin")
        heard, heard_twin = Announcements(), Announcements()
        await heard.start(site_client)
        await heard_twin.start(twin_client)
        mirror = RegistryBuckets(site_admin, timeout_s=5.0)
        await mirror.open()
        arrivals = MirrorArrivals(mirror)
        tasks.append(asyncio.create_task(arrivals.run()))

        out: dict[str, Any] = {"layout": "three hub nodes (R3), one edge site (leaf node, mirrors), TLS, nats.conf"}
        clients_by = {"site": site_client, "disk": twin_client}
        out["cold_load"] = await _cold_loads(clients_by, {"site": heard, "disk": heard_twin}, cold, pids, spares)
        out["announce"] = await edge_announce.measure(
            publisher,
            hub_publisher,
            site_admin,
            heard,
            arrivals,
            announced,
            sizes.edge_floor_samples,
            pids["site"],
            spares,
        )
        out["catch_up"] = await edge_catch_up.measure(edge, publisher, hub_admin, site_admin, heard, catch_up_rounds)
        out["prepare"] = summary_ms(prepare_ns)
        return {"edge": out}
    finally:
        await stop_all(tasks, children, clients)
        await asyncio.to_thread(twin.stop)
        await asyncio.to_thread(edge.stop)


async def _cold_loads(
    clients: dict[str, Client],
    heard: dict[str, Announcements],
    versions: list[str],
    pids: dict[str, int],
    spares: int,
) -> dict[str, Any]:
    """Each version loaded once at the site (its archive fetched from the site's mirror) and once from disk, the
    order turning each time; both from an empty cache, and each load with both loaders' spares ready."""
    samples: dict[str, list[int]] = {"site": [], "disk": []}
    for i, version in enumerate(versions):
        body = msgspec.json.encode({"extension_type": KIND, "name": "edge-cold", "version": version})
        for which in ("site", "disk") if i % 2 == 0 else ("disk", "site"):
            await wait_for_all_spares({pid: spares for pid in pids.values()})
            began = time.perf_counter_ns()
            reply = await clients[which].request("extensions.load", body, timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
            elapsed = time.perf_counter_ns() - began
            envelope = msgspec.json.decode(reply.data)
            if not envelope.get("success"):
                raise BenchError(f"{which}: load edge-cold {version}: {envelope.get('error')}")
            samples[which].append(elapsed)
    for nc in clients.values():
        await nc.flush()  # the last events arrive behind this round trip's answer
    out: dict[str, Any] = {"loads": len(versions)}
    for which, figures in samples.items():
        out[which] = summary_ms(figures)
        own = [a.duration_ms for a in heard[which].heard if a.name == "edge-cold" and a.reason == "load" and a.cold]
        out[f"{which}_load"] = summary_ms([int(ms * 1e6) for ms in own])
    disk_p50 = out["disk"]["p50_ms"]
    out["ratio"] = round(out["site"]["p50_ms"] / disk_p50, 2) if disk_p50 else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery, measures nothing")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    options = replace(Options(), sizes=QUICK if args.quick else FULL)
    logs = RESULTS.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="extension-loader-bench-edge-") as tmp:
        try:
            result = asyncio.run(measure(options, Path(tmp), logs))
        except BenchError as exc:
            print(f"bench: {exc}\n(the loaders' logs: {logs})", file=sys.stderr)
            return 1
    for verdict in judge_edge(result):
        print(f"{'PASS' if verdict.passed else 'MISS'}  {verdict.name}: {verdict.figure} (goal {verdict.target})")
    print()
    print(render_edge(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
