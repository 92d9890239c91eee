"""What a run is given: the sizes of its phases (full and quick), its options with the paths they default to,
and the error that ends it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import service

from . import durability, registry_fetch, tree_check

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "extensions"
NU = ROOT / "node_modules" / "@nushell" / "linux-x64" / "bin" / "nu"
SERVICE_SOURCE = Path(service.__file__).resolve().parent  # PYTHONPATH may point the run at another copy
RESULTS = ROOT / "bench" / "results" / "latest.json"


@dataclass(frozen=True, slots=True)
class Sizes:
    levels: tuple[int, ...] = (1, 16, 128)
    repetitions: int = 3
    run_seconds: float = 2.0  # per closed-loop run; it also stops at run_max_requests
    run_max_requests: int = 200_000
    warmup_requests: int = 2_000
    rss_requests: int = 10_000
    rss_in_flight: int = 16
    cold_loads: int = 30
    bare_runs: int = 30
    simultaneous: int = 64
    simultaneous_repetitions: int = 3
    tree_names: int = 2_000
    tree_versions: int = 5
    discover_repeats: int = 10
    tree_cold_loads: int = 20
    burst: int = 32  # different cold loads sent at once, to a service with spares and to one without
    burst_repetitions: int = 5
    dependency_loads: int = 5
    contention_seconds: float = 5.0
    contention_discover_every_s: float = 0.1  # the other client's pace of discovers; 0: back to back
    registry_bytes: int = registry_fetch.SIZE  # the archive the registry phase reads
    registry_runs: int = registry_fetch.RUNS
    tree_check_bytes: int = tree_check.SIZE  # the archive whose unpacked tree is checked against its digest
    tree_check_runs: int = tree_check.RUNS
    announce_versions: int = 10  # versions published, each announced by a loader on another node
    announce_floor_samples: int = 3  # bare Key-Value puts seen by a watch on another node, before each publish
    registry_cold_loads: int = 15  # distinct versions, each loaded cold from the registry and from disk
    edge_announce_versions: int = 10  # published at the hub, each announced by a loader at the edge site
    edge_floor_samples: int = 3  # bare writes at the hub seen through the site's mirror, before each publish
    edge_cold_loads: int = 15  # distinct versions, each loaded cold at the site from its mirror and from disk
    edge_catch_up_publishes: int = 10  # published at the hub while the site's link is cut, each round
    edge_catch_up_holds_s: tuple[float, ...] = (5.0, 10.0, 20.0)  # how long the link is cut, one round each
    durability_rounds: int = durability.ROUNDS  # sync_interval always vs the default, rounds on each server
    durability_puts: int = durability.PUTS  # Key-Value puts on each server a round
    durability_publishes: int = durability.PUBLISHES  # awaited publishes, and async ones, on each server a round


FULL = Sizes()
QUICK = Sizes(
    levels=(1, 4),
    repetitions=1,
    run_seconds=1.0,
    run_max_requests=20,
    warmup_requests=10,
    rss_requests=20,
    rss_in_flight=4,
    cold_loads=2,
    bare_runs=2,
    simultaneous=8,
    simultaneous_repetitions=1,
    tree_names=10,
    tree_versions=2,
    discover_repeats=2,
    tree_cold_loads=2,
    burst=4,
    burst_repetitions=1,
    dependency_loads=1,
    contention_seconds=0.5,
    registry_bytes=600_000,
    registry_runs=1,
    tree_check_bytes=tree_check.QUICK_SIZE,
    tree_check_runs=tree_check.QUICK_RUNS,
    announce_versions=2,
    announce_floor_samples=1,
    registry_cold_loads=2,
    edge_announce_versions=2,
    edge_floor_samples=1,
    edge_cold_loads=2,
    edge_catch_up_publishes=2,
    edge_catch_up_holds_s=(2.0,),
    durability_rounds=durability.QUICK_ROUNDS,
    durability_puts=durability.QUICK_WRITES,
    durability_publishes=durability.QUICK_WRITES,
)


@dataclass(frozen=True, slots=True)
class Options:
    sizes: Sizes = FULL
    output: Path = RESULTS
    nu: Path = NU
    service_sets: tuple[str, ...] = ()  # extra `--set KEY=VALUE` for the service
    wrap: tuple[str, ...] = ()  # a command the service runs under, e.g. a profiler
    log_dir: Path | None = None  # where child logs go; `logs/` beside the output when None


class BenchError(RuntimeError):
    pass
