"""The registry on a three-node JetStream cluster (R3 buckets, free loopback ports), with loaders as child
processes: how soon a publish is announced by a loader on another node, and what a cold load from the registry
costs beside a cold load of the same folder from disk.

registry_announce   the publisher on node 1, a loader with `registry.auto_update = true` on node 2; for each of
                    `announce_versions` new versions of one extension (each the new latest, prepared beforehand:
                    `app.publishing.prepare`, timed apart), the time from the start of `publish()` to the
                    arrival of that loader's `extensions.loaded` (reason `published`) at a subscriber on node 1,
                    its spares ready first. The floor, interleaved in the same run: a bare nats-py Key-Value put
                    on node 1 (an R3 bucket of its own) to the update arriving at a watch on node 2,
                    `announce_floor_samples` before each publish.
registry_cold_load  two loaders on node 2, one with an empty cache and no extension tree (`registry.enabled`),
                    one with the same folders on disk and no registry; `registry_cold_loads` distinct versions,
                    each loaded once by each (a cold load, the registry's with its archive never fetched before),
                    interleaved, each loader's spares ready before its load: the medians and their ratio.

`python -m bench.registry_cluster [--quick]` runs both alone and prints their part of the report; `make bench`
runs them as its last phase. Timings are reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.kv import KeyValue

from service.app.natsserver import NatsCluster
from service.app.publishing import Prepared, prepare, publish
from service.contract.config import Config, load_config
from service.registry.jetstream import RegistryBuckets
from service.registry.signing import Signer, read_seed, write_seed

from .load import summary_ms
from .options import FULL, QUICK, RESULTS, BenchError, Options
from .procs import Child
from .report import render_registry
from .services import (
    HEADERS,
    REQUEST_TIMEOUT_S,
    SERVICE_MARKER,
    expected_spares,
    start_service,
    toml_string,
    wait_for_spares,
    wait_ready,
)
from .targets import judge_registry

NAME_ANNOUNCED = "announced"  # the extension published again and again for registry_announce
NAME_COLD = "cold"  # the extension of registry_cold_load, on disk and in the registry
PREFIXES = {"announce": "bench-announce", "registry": "bench-registry", "disk": "bench-disk"}
FLOOR_BUCKET = "bench-floor"


async def measure(options: Options, work: Path, logs: Path) -> dict[str, Any]:
    """Both measurements on one cluster; `{"registry_announce": ..., "registry_cold_load": ...}`."""
    sizes = options.sizes
    cluster = NatsCluster(work / "registry-cluster", 3)
    await asyncio.to_thread(cluster.start)
    children: list[Child] = []
    clients: list[Client] = []
    try:
        node1, node2 = cluster.urls[0], cluster.urls[1]
        signer = _signer(work)
        config = _publishing_config(options, work)
        tree = work / "registry-tree"
        announced = [_extension(tree, NAME_ANNOUNCED, f"1.0.{i}") for i in range(sizes.announce_versions)]
        cold = [_extension(tree, NAME_COLD, f"2.0.{i}") for i in range(sizes.registry_cold_loads)]
        prepare_ns: list[int] = []
        prepared: list[Prepared] = []
        for folder in [*announced, *cold]:
            began = time.perf_counter_ns()
            prepared.append(await prepare(folder, signer, config))
            prepare_ns.append(time.perf_counter_ns() - began)
        nc1 = await _connect(node1, clients)
        nc2 = await _connect(node2, clients)
        buckets = RegistryBuckets(nc1, timeout_s=REQUEST_TIMEOUT_S)
        await buckets.create(replicas=3)
        for item in prepared[len(announced) :]:  # the cold load's versions, before any loader starts
            await publish(buckets, item)

        registry = {
            "registry.enabled": "true",
            "registry.trusted": f'[{{key = "{signer.public_key}"}}]',
        }
        loaders: dict[str, tuple[str, Sequence[Path], dict[str, str]]] = {
            "announce": (node2, [], {**registry, "registry.auto_update": "true"}),
            "registry": (node2, [], registry),
            "disk": (node2, [tree], {}),
        }
        pids: dict[str, int] = {}
        spares: dict[str, int] = {}
        for which, (url, roots, sets) in loaders.items():
            loader_options = replace(
                options,
                service_sets=(
                    *options.service_sets,
                    f"nats.subject_prefix={PREFIXES[which]}",
                    *(f"{k}={v}" for k, v in sets.items()),
                ),
            )
            empty = work / f"registry-{which}-roots"
            empty.mkdir()
            child = start_service(
                children, loader_options, url, work / f"data-registry-{which}", roots or [empty], logs / f"{which}.log"
            )
            await wait_ready(nc1, f"{PREFIXES[which]}.stats", child)
            pids[which] = child.main_pid(SERVICE_MARKER)
            spares[which] = expected_spares(loader_options)

        out: dict[str, Any] = {}
        out["registry_cold_load"] = await _cold_loads(nc1, sizes.registry_cold_loads, pids, spares)
        out["registry_announce"] = await _announce(
            nc1, nc2, buckets, prepared[: len(announced)], sizes.announce_floor_samples, pids, spares
        )
        out["registry_announce"]["prepare"] = summary_ms(prepare_ns)
        return out
    finally:
        for child in reversed(children):
            child.stop()
        for nc in clients:
            await nc.close()
        await asyncio.to_thread(cluster.stop)


async def _announce(
    nc1: Client,
    nc2: Client,
    buckets: RegistryBuckets,
    versions: Sequence[Prepared],
    floor_samples: int,
    pids: dict[str, int],
    spares: dict[str, int],
) -> dict[str, Any]:
    prefix = PREFIXES["announce"]
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
            await wait_for_spares(pids["announce"], spares["announce"])
            version = prepared.release.version
            waiting[version] = loop.create_future()
            began = time.perf_counter_ns()
            await publish(buckets, prepared)
            published = time.perf_counter_ns()
            try:
                arrived, duration_ms = await asyncio.wait_for(waiting[version], REQUEST_TIMEOUT_S)
            except TimeoutError:
                raise BenchError(
                    f"{prefix}: no extensions.loaded (reason published) for {NAME_ANNOUNCED} {version} within "
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


async def _cold_loads(nc: Client, count: int, pids: dict[str, int], spares: dict[str, int]) -> dict[str, Any]:
    runner_ms: dict[str, list[float]] = {"registry": [], "disk": []}

    def on_loaded(which: str) -> Any:
        async def handle(msg: Msg) -> None:
            event = msgspec.json.decode(msg.data)
            if event.get("reason") == "load":
                runner_ms[which].append(float(event.get("duration_ms", 0.0)))

        return handle

    subs = [await nc.subscribe(f"{PREFIXES[w]}.loaded", cb=on_loaded(w)) for w in runner_ms]
    await nc.flush()
    samples: dict[str, list[int]] = {"registry": [], "disk": []}
    stats_before = await _stats(nc, "registry")
    try:
        for i in range(count):
            body = msgspec.json.encode({"extension_type": "taskserv", "name": NAME_COLD, "version": f"2.0.{i}"})
            for which in ("registry", "disk") if i % 2 == 0 else ("disk", "registry"):
                await wait_for_spares(pids[which], spares[which])
                began = time.perf_counter_ns()
                reply = await nc.request(f"{PREFIXES[which]}.load", body, timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
                elapsed = time.perf_counter_ns() - began
                envelope = msgspec.json.decode(reply.data)
                if not envelope.get("success"):
                    raise BenchError(f"{PREFIXES[which]}.load {NAME_COLD} 2.0.{i}: {envelope.get('error')}")
                samples[which].append(elapsed)
        await nc.flush()  # the last events arrive behind this round trip's PONG
    finally:
        for sub in subs:
            await sub.unsubscribe()
    stats_after = await _stats(nc, "registry")
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


async def _stats(nc: Client, which: str) -> Any:
    reply = await nc.request(f"{PREFIXES[which]}.stats", b"{}", timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
    envelope = msgspec.json.decode(reply.data)
    if not envelope.get("success"):
        raise BenchError(f"{PREFIXES[which]}.stats: {envelope.get('error')}")
    return envelope["data"]


async def _connect(url: str, clients: list[Client]) -> Client:
    nc = await nats.connect(url, name="bench-registry", allow_reconnect=False, max_reconnect_attempts=0)
    clients.append(nc)
    return nc


def _signer(work: Path) -> Signer:
    seed = work / "publisher.nk"
    write_seed(seed)
    return read_seed(seed)


def _publishing_config(options: Options, work: Path) -> Config:
    """What `prepare` needs: the Nushell that checks each folder as a load would."""
    return load_config(
        environ={},
        overrides=[
            f"nushell.path={toml_string(str(options.nu))}",
            f"orchestrator.paths.data_dir={toml_string(str(work / 'data-publisher'))}",
        ],
    )


def _extension(tree: Path, name: str, version: str) -> Path:
    folder = tree / "taskservs" / name / version
    folder.mkdir(parents=True)
    (folder / "metadata.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\ndescription = "registry benchmark extension {name}"\n'
        'type = "taskserv"\ndependencies = []\n'
    )
    (folder / "mod.nu").write_text("export def check [] { {ok: true} }\n")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.registry_cluster", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery, measures nothing")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a loader setting")
    args = p.parse_args(argv)
    options = Options(sizes=QUICK if args.quick else FULL, service_sets=tuple(args.set))
    logs = RESULTS.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="extension-loader-bench-registry-cluster-") as tmp:
        try:
            result = asyncio.run(measure(options, Path(tmp), logs))
        except BenchError as exc:
            print(f"bench: {exc}\n(the loaders' logs: {logs})", file=sys.stderr)
            return 1
    for verdict in judge_registry(result):
        print(f"{'PASS' if verdict.passed else 'MISS'}  {verdict.name}: {verdict.figure} (goal {verdict.target})")
    print()
    print("\n".join(render_registry(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
