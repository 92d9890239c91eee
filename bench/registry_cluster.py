"""The registry on a three-node JetStream cluster (R3 buckets, free loopback ports), with loaders as child
processes: how soon a publish is announced by a loader on another node, and what a cold load from the registry
costs beside a cold load of the same folder from disk.

This module owns the cluster and what both measurements stand on: the three nodes, the publisher's key, the
versions prepared beforehand (`app.publishing.prepare`, timed apart and reported as `prepare`), the cold load's
versions published before any loader starts, and three loaders on node 2, each under a subject prefix of its own.
Each measurement is a module of its own, named after its part of the result: `registry_cold_load` (two loaders,
one from the registry and one from disk) and `registry_announce` (a loader with `registry.auto_update = true`).

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

import nats
from nats.aio.client import Client

from service.app.natsserver import NatsCluster
from service.app.publishing import Prepared, prepare, publish
from service.app.setup import set_up
from service.app.stream_settings import registry_targets
from service.contract.config import Config, load_config
from service.registry.buckets import RegistryBuckets
from service.registry.names import DEFAULT_NAMES
from service.registry.signing import Signer, read_seed, write_seed

from . import registry_announce, registry_cold_load
from .load import summary_ms
from .options import FULL, QUICK, RESULTS, BenchError, Options
from .procs import Child
from .report import render_registry
from .services import (
    REQUEST_TIMEOUT_S,
    SERVICE_MARKER,
    expected_spares,
    start_service,
    toml_string,
    wait_ready,
)
from .targets import judge_registry

PREFIXES = {"announce": "bench-announce", "registry": "bench-registry", "disk": "bench-disk"}


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
        announced = [_extension(tree, registry_announce.NAME, f"1.0.{i}") for i in range(sizes.announce_versions)]
        cold = [_extension(tree, registry_cold_load.NAME, f"2.0.{i}") for i in range(sizes.registry_cold_loads)]
        prepare_ns: list[int] = []
        prepared: list[Prepared] = []
        for folder in [*announced, *cold]:
            began = time.perf_counter_ns()
            prepared.append(await prepare(folder, signer, config))
            prepare_ns.append(time.perf_counter_ns() - began)
        nc1 = await _connect(node1, clients)
        nc2 = await _connect(node2, clients)
        await set_up(nc1, registry_targets(DEFAULT_NAMES), replicas=3)  # as `extension-loader setup --replicas 3`
        buckets = RegistryBuckets(nc1, timeout_s=REQUEST_TIMEOUT_S)
        await buckets.open()
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
        cold_prefixes = {which: PREFIXES[which] for which in ("registry", "disk")}
        out["registry_cold_load"] = await registry_cold_load.measure(
            nc1, sizes.registry_cold_loads, cold_prefixes, pids, spares
        )
        out["registry_announce"] = await registry_announce.measure(
            nc1,
            nc2,
            buckets,
            prepared[: len(announced)],
            sizes.announce_floor_samples,
            PREFIXES["announce"],
            pids["announce"],
            spares["announce"],
        )
        out["registry_announce"]["prepare"] = summary_ms(prepare_ns)
        return out
    finally:
        for child in reversed(children):
            child.stop()
        for nc in clients:
            await nc.close()
        await asyncio.to_thread(cluster.stop)


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
