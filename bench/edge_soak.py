"""The edge soak: an edge site served through faults, and a count of what was lost (`python -m bench.edge_soak`,
`make soak`).

A hub of three clustered JetStream nodes and one edge site, from the shipped files (`edge_site.py`), with two site
loaders (`auto_update = true`) as children. While a client at the site sends steady requests (`edge_requests.py`)
and a publisher at the hub publishes a new version every few seconds, signed by a key the loaders trust, faults
are injected one after another (`edge_faults.py`): the leaf link cut, a hub node killed, a site loader restarted.
Then the faults and the publishes stop and the site is given time to catch up (its mirrors retry with a back-off
of up to two minutes after a long outage), while the requests go on; last, every version is loaded once more at
the site.

Counted and judged (`edge_tally.py`): requests sent, answered, answered with a contract error (by code), and lost
(no reply within a bound longer than any of the service's own, or no responders): none may be lost; every version
the hub acknowledged is in the hub's index, and in the site's mirror at the end; each published version announced
once by each loader; every digest served or announced is the signed tree digest, and no loader refused bytes as
untrusted or invalid. The figures go to `bench/results/edge_soak.json` and `.md`; the exit status is 1 when a
judgement fails. `--quick` runs one fault of each kind, in about a minute: `tests/bench/test_edge_soak.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from service.registry.buckets import RegistryBuckets

from . import edge_tally
from .edge_faults import Faults, Holds
from .edge_loaders import SiteLoader
from .edge_registry import Publisher, new_signer, publishing_config, versions_held
from .edge_requests import Requester
from .edge_site import ARCHIVES, INDEX, REG_API, Edge, stop_all
from .edge_watch import Announcements, MirrorArrivals, MirrorStaleness
from .options import RESULTS, BenchError, Options
from .procs import Child

OUTPUT = RESULTS.with_name("edge_soak.json")
CATCH_UP_S = 180.0  # the mirrors' back-off (up to two minutes) and then a moment
ANNOUNCED_WITHIN_S = 60.0  # after the mirror holds everything
PUBLISH_WITHIN_S = 90.0  # retries of one publish (a node killed, its cluster settling)


@dataclass(frozen=True)
class SoakSizes:
    minutes: float = 10.0
    rounds: int | None = None  # rounds of faults (one of each kind); None: until `minutes` are up
    base_versions: int = 20  # published before the loaders start: cold loads
    names: tuple[str, ...] = ("soak-a", "soak-b", "soak-c", "soak-d")  # published in turn during the soak
    publish_every_s: float = 3.0
    rate: float = 12.0  # requests a second, all workers together
    workers: int = 4
    holds: Holds = field(default_factory=Holds)


QUICK = SoakSizes(
    minutes=2.0,
    rounds=1,
    base_versions=4,
    publish_every_s=1.5,
    rate=8.0,
    holds=Holds(link_cut_s=(3.0, 4.0), hub_node_down_s=(2.0, 3.0), gap_s=2.0),
)


async def soak(sizes: SoakSizes, options: Options, work: Path, logs: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    edge = Edge(work / "edge")
    await asyncio.to_thread(edge.start)
    children: list[Child] = []
    clients: list[Client] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        await edge.set_up()
        signer = new_signer(work)

        async def connect(urls: str | list[str], user: str, on_hub: bool, name: str) -> Client:
            nc = await edge.connect(urls, user, node=edge.hub[0] if on_hub else edge.site, name=name)
            clients.append(nc)
            return nc

        publisher = Publisher(
            await connect(edge.hub_urls, "publisher", True, "soak-publisher"),
            REG_API,
            signer,
            publishing_config(options, work),
            work / "tree",
        )
        await publisher.open()
        base = [(f"soak-cold-{i % 2}", f"0.1.{i}") for i in range(sizes.base_versions)]
        for name, version in base:
            await publisher.publish(await publisher.prepare(name, version), PUBLISH_WITHIN_S)

        trusted = {
            "registry.enabled": "true",
            "registry.auto_update": "true",
            "registry.trusted": f'[{{key = "{signer.public_key}"}}]',
        }
        loaders = [
            SiteLoader(n, edge.site, edge.ca, work, logs, options, registry=trusted) for n in ("site-a", "site-b")
        ]
        for loader in loaders:
            await loader.start(children)
        client = await connect(edge.site.url, "orchestrator", False, "soak-client")
        heard = Announcements()
        await heard.start(client)
        site_admin = await connect(edge.site.url, "admin", False, "soak-observer")
        mirror_buckets = RegistryBuckets(site_admin, timeout_s=5.0)
        await mirror_buckets.open()
        arrivals = MirrorArrivals(mirror_buckets)
        tasks.append(asyncio.create_task(arrivals.run()))
        hub_admin = await connect(edge.hub_urls, "admin", True, "soak-hub-observer")
        staleness = MirrorStaleness(hub_admin, site_admin, (INDEX, ARCHIVES))
        tasks.append(asyncio.create_task(staleness.run()))

        live: list[tuple[str, str]] = []
        requester = Requester(client, lambda: live, base, rng)
        faults = Faults(edge, loaders, children, rng)
        stop_faults, stop_requests = asyncio.Event(), asyncio.Event()
        requesting = asyncio.create_task(requester.run(stop_requests, sizes.rate, sizes.workers))
        tasks.append(requesting)
        began = time.monotonic()
        publishing = asyncio.create_task(_publish(publisher, sizes, live, stop_faults))
        faulting = asyncio.create_task(faults.run(stop_faults, sizes.holds, sizes.rounds))
        tasks += [publishing, faulting]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(faulting), sizes.minutes * 60 if sizes.rounds is None else None)
        stop_faults.set()
        fault_error = None
        try:
            await faulting
        except Exception as exc:  # the soak's own machinery failed: what was counted so far is still reported
            fault_error = f"{type(exc).__name__}: {exc}"
            await asyncio.to_thread(_restore, edge)
        gave_up = await publishing
        faulted_s = time.monotonic() - began

        # The catch-up: whatever the hub acknowledged must reach the site, and be announced, requests going on.
        every_name = sorted({name for name, _ in publisher.published})
        hub_held = await versions_held(publisher.buckets, every_name)
        at_hub = {(n, v) for n, versions in hub_held.items() for v in versions}
        acknowledged = set(publisher.published) - set(base)
        missing_at_hub = len(set(publisher.published) - at_hub)
        caught_up_s: float | None = None
        with contextlib.suppress(BenchError):
            caught_up_s = round(await arrivals.wait_for(at_hub | set(publisher.published), CATCH_UP_S), 1)
        live_versions = sorted(acknowledged)

        def judged(final: bool = False) -> dict[str, Any]:
            return {
                loader.name: edge_tally.announcements(
                    loader.history,
                    heard.heard,
                    live_versions,
                    arrivals.arrived,
                    edge_tally.waited_for_archives(loader.log_lines()) if final else None,
                )
                for loader in loaders
            }

        with contextlib.suppress(BenchError):
            await heard.wait_for(
                lambda _: all(j["missed"] == 0 for j in judged().values()), ANNOUNCED_WITHIN_S, "announcements"
            )
        stop_requests.set()
        await requesting

        signed = {key: published.tree_digest for key, published in publisher.published.items()}
        sweep = await _sweep(requester, signed)
        served = requester.served | {(a.name, a.version, a.digest) for a in heard.heard}
        audit_lines = [line for loader in loaders for line in loader.log_lines()]
        site_held = await versions_held(mirror_buckets, every_name)
        at_site = {(n, v) for n, versions in site_held.items() for v in versions}
        raw = {
            "announcements": [asdict(a) for a in heard.heard],
            "arrived": [[n, v, t] for (n, v), t in arrivals.arrived.items()],
            "history": {loader.name: [asdict(i) for i in loader.history] for loader in loaders},
        }
        return {
            "raw": raw,
            "duration_s": round(faulted_s, 1),
            "seed": seed,
            "sizes": asdict(sizes),
            "requests": requester.summary(),
            "faults": dict(faults.counts),
            "fault_error": fault_error,
            "fault_log": faults.done,
            "published": {
                "live": len(acknowledged),
                "base": len(base),
                "gave_up": gave_up,
                "failed_attempts": publisher.failures,
                "answers_lost": sum(p.answer_lost for p in publisher.published.values()),
                "missing_at_hub": missing_at_hub,
            },
            "mirror": {
                "caught_up_s": caught_up_s,
                "missing_at_site": len((at_hub | set(publisher.published)) - at_site),
                "missing": sorted(f"{n} {v}" for n, v in (at_hub | set(publisher.published)) - at_site)[:20],
                "observer_restarts": arrivals.restarts,
                "staleness": staleness.summary(),
            },
            "announcements": judged(final=True),
            "checks": {
                "bad_digests": edge_tally.bad_digests(served, signed),
                "audit": edge_tally.audit(audit_lines),
                "sweep": sweep,
            },
        }
    finally:
        await stop_all(tasks, children, clients)
        await asyncio.to_thread(edge.stop)


def _restore(edge: Edge) -> None:
    """After a fault that could not be carried out: the link mended, every hub node running."""
    edge.mend()
    for node in edge.hub:
        if not node.running:
            node.start()
    edge.wait_hub_settled()


async def _publish(publisher: Publisher, sizes: SoakSizes, live: list[tuple[str, str]], stop: asyncio.Event) -> int:
    """A new version every `publish_every_s`, the names in turn, until `stop`; how many it gave up on."""
    gave_up = 0
    count = 0
    while not stop.is_set():
        began = time.monotonic()
        name = sizes.names[count % len(sizes.names)]
        version = f"1.0.{count // len(sizes.names)}"
        count += 1
        try:
            published = await publisher.publish(await publisher.prepare(name, version), PUBLISH_WITHIN_S)
        except BenchError:
            gave_up += 1
        else:
            live.append((published.name, published.version))
        rest = sizes.publish_every_s - (time.monotonic() - began)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(rest, 0.0))  # the pace of publishes
    return gave_up


async def _sweep(requester: Requester, signed: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Every version published loaded once more at the site: each must come with its signed digest."""
    failed: list[str] = []
    for (name, version), digest in sorted(signed.items()):
        data = await requester.one("sweep", "load", name, version)
        if data is None or data.get("digest") != digest or data.get("metadata", {}).get("version") != version:
            failed.append(f"{name} {version}")
    return {"versions": len(signed), "ok": len(signed) - len(failed), "failed": failed[:20]}


def passed(result: dict[str, Any]) -> list[str]:
    """What the soak's judgement found wrong; [] when nothing."""
    wrong = []
    if result["fault_error"]:
        wrong.append(f"a fault could not be carried out: {result['fault_error']}")
    if result["requests"]["lost"]:
        wrong.append(f"{result['requests']['lost']} requests lost")
    if result["published"]["missing_at_hub"]:
        wrong.append(f"{result['published']['missing_at_hub']} acknowledged publishes missing at the hub")
    if result["mirror"]["missing_at_site"]:
        wrong.append(f"{result['mirror']['missing_at_site']} versions missing from the site's mirror")
    for name, judged in result["announcements"].items():
        if judged["duplicates"] or judged["missed"] or judged["unexpected"]:
            wrong.append(f"{name}: {judged['duplicates']} duplicates, {judged['missed']} missed announcements")
    checks = result["checks"]
    if checks["bad_digests"] or checks["audit"]["untrusted_or_invalid"]:
        wrong.append(f"{len(checks['bad_digests'])} bad digests, {checks['audit']['untrusted_or_invalid']} refusals")
    if checks["sweep"]["ok"] != checks["sweep"]["versions"]:
        wrong.append(f"final sweep: {checks['sweep']['failed']}")
    return wrong


def run(sizes: SoakSizes, output: Path = OUTPUT, log_dir: Path | None = None, seed: int = 1) -> dict[str, Any]:
    """The soak, its result written to `output` (JSON) and beside it (`.md`); returns the result."""
    logs = log_dir or output.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="extension-loader-edge-soak-") as tmp:
        result = asyncio.run(soak(sizes, Options(), Path(tmp), logs, seed))
    result = {
        "started_at": started,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.edge_soak", *sys.argv[1:]]),
        "asked": f"{sizes.minutes:g} min of faults" if sizes.rounds is None else f"{sizes.rounds} round of faults",
        "loadavg_start": load_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        **result,
    }
    result["wrong"] = passed(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    raw = result.pop("raw")  # what was judged, to judge again: every announcement, arrival and loader start
    output.with_suffix(".raw.json").write_text(json.dumps(raw) + "\n")
    output.write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(edge_tally.render(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.edge_soak", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--quick", action="store_true", help="one fault of each kind, in about a minute")
    p.add_argument("--minutes", type=float, help="how long faults are injected (default 10)")
    p.add_argument("--seed", type=int, default=1, help="the faults' holds and the requests' mix")
    p.add_argument("--output", type=Path, default=OUTPUT, help="the JSON (the Markdown goes beside it)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else SoakSizes()
    if args.minutes is not None:
        sizes = replace(sizes, minutes=args.minutes, rounds=None)
    try:
        result = run(sizes, args.output, seed=args.seed)
    except BenchError as exc:
        print(f"edge soak: {exc}", file=sys.stderr)
        return 1
    print(edge_tally.render(result))
    for line in result["wrong"]:
        print(f"WRONG: {line}")
    print(f"\nJSON: {args.output}")
    return 1 if result["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
