"""Smoke test of the benchmark: every phase at tiny sizes against real nats-server, Nushell and the service.

It checks that a run produces a result with every section and sane numbers, and that the verdicts on the targets
follow from the figures (checked on made-up figures on both sides of each goal). It asserts no timing target:
timings belong to `make bench`, not to tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.durability_writes import filesystem
from bench.load import percentile, summary_ms
from bench.options import QUICK
from bench.report import render
from bench.run import quick
from bench.targets import (
    ANNOUNCE_TARGET_MS,
    COLD_TARGET,
    P99_TARGET_US,
    RATIO_TARGET,
    REGISTRY_COLD_TARGET,
    RSS_TARGET_MB,
    judge,
    judge_edge,
    judge_registry,
)
from bench.tree_check import QUICK_RUNS, QUICK_SIZE, SMALL_RUNS_FACTOR
from bench.tree_check import main as tree_check_main


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0
    assert summary_ms([1_000_000, 3_000_000])["p50_ms"] == 2.0


def test_filesystem_is_read_from_the_mounts() -> None:
    assert filesystem(Path("/proc/self")) == "proc"
    assert filesystem(Path(__file__))  # whatever holds the project


def _positive(section: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert section[key] > 0, f"{key} = {section[key]!r}"


def test_tree_check_runs_alone_at_quick_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "tree_check.json"
    assert tree_check_main(["--quick", "--json", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["size_target_bytes"] == QUICK_SIZE and result["large"]["runs"] == QUICK_RUNS
    assert result["large"]["tree_digest"]["n"] == QUICK_RUNS
    assert "| large | `tree_digest` of the unpacked tree |" in capsys.readouterr().out


def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "results" / "latest.json"
    returned = quick(output, log_dir=tmp_path / "logs")

    result = json.loads(output.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["mode"] == "quick"
    sections = (
        "machine",
        "startup",
        "rss",
        "cached",
        "cold",
        "simultaneous",
        "dependencies",
        "discovery",
        "contention",
        "burst",
        "spare_memory",
        "registry_fetch",
        "tree_check",
        "registry_announce",
        "registry_cold_load",
        "durability",
        "edge",
    )
    for section in (*sections, "targets"):
        assert section in result, section
    assert result["machine"]["nproc"] > 0
    assert result["machine"]["nu"] and result["machine"]["nats_server"]

    levels = result["cached"]["levels"]
    assert [lv["in_flight"] for lv in levels] == list(QUICK.levels)
    for level in levels:
        for target in ("echo", "echo_ct", "service"):
            figures = level[target]
            _positive(figures, "rps", "p50_us", "p99_us")
            assert figures["errors"] == 0
            assert all(run["completed"] == QUICK.run_max_requests for run in figures["runs"])
        assert level["ratio"] > 0 and level["ratio_to_echo_ct"] > 0

    cold = result["cold"]
    for name in ("bare_nu", "bare_nu_no_std_lib", "loader_parse_only", "loader_direct", "service_reload", "runner"):
        assert cold[name]["n"] > 0, name
        _positive(cold[name], "p50_ms", "p90_ms")
    assert cold["ratio_to_bare_nu"] > 0

    rss = result["rss"]
    assert rss["requests"] == QUICK.rss_requests and rss["errors"] == 0
    _positive(rss, "after_requests_mb")

    sim = result["simultaneous"]
    assert sim["requests"] == QUICK.simultaneous
    assert all(rep["succeeded"] == QUICK.simultaneous for rep in sim["repetitions"])
    _positive(sim, "wall_ms_p50")

    discovery = result["discovery"]
    assert discovery["found"] == QUICK.tree_names
    _positive(discovery, "first_ms", "reply_bytes")
    assert discovery["repeated"]["n"] == QUICK.discover_repeats
    assert discovery["cold_load"]["n"] == QUICK.tree_cold_loads
    assert discovery["cached_load_during_discover"]["n"] > 0

    burst = result["burst"]
    assert burst["loads"] == QUICK.burst and burst["ratio"] > 0
    assert len(burst["spares_wall_ms"]) == len(burst["no_spares_wall_ms"]) == QUICK.burst_repetitions
    for cpu in (burst["spares_cpu"], burst["no_spares_cpu"]):  # Nushell used CPU time, read off the service
        assert cpu["nushell_cpu_ms"] > 0 and cpu["cpus"] >= 1 and cpu["cpu_floor_ms"] > 0
    memory = result["spare_memory"]
    assert memory["spares"] == 2 and len(memory["spare_processes"]) == 2
    assert memory["service_mb"] > 0 and memory["spares_rss_mb"] > 0

    names = {t["name"] for t in result["targets"]}
    assert names >= {
        "cached p99, 1 in flight",
        "service RSS with 2 spares idle",
        f"{QUICK.burst} different cold loads at once, total: spares / spares = 0",
    }

    dependencies = result["dependencies"]
    assert dependencies["n"] == QUICK.dependency_loads
    assert dependencies["cold_loads"] == [9] * QUICK.dependency_loads  # ci-cd and its eight, from an empty cache
    _positive(dependencies, "p50_ms", "ratio_to_cold_load", "nushell_cpu_ms", "cpu_floor_ms")

    contention = result["contention"]
    for figures in (contention["cached_load"], contention["echo_under_churn"]):
        assert figures["n"] > 0 and figures["errors"] == 0
        _positive(figures, "p50_ms", "p99_ms")
    # Each loop of the other client finishes the request it waits on when told to stop: one of each at least.
    assert contention["other_client"]["discovers"] >= 1 and contention["other_client"]["reloads"] >= 1
    assert contention["other_client"]["errors"] == 0

    announce = result["registry_announce"]
    assert announce["versions"] == QUICK.announce_versions and announce["replicas"] == 3
    for key in ("announce", "publish", "loader_load", "prepare"):
        _positive(announce[key], "p50_ms", "p90_ms")
    assert announce["announce"]["n"] == QUICK.announce_versions
    assert announce["announce"]["p50_ms"] >= announce["publish"]["p50_ms"]  # publish() is part of it
    assert announce["floor_kv_put_to_watch"]["n"] == QUICK.announce_versions * QUICK.announce_floor_samples
    _positive(announce["floor_kv_put_to_watch"], "p50_ms")
    cold_registry = result["registry_cold_load"]
    assert cold_registry["loads"] == cold_registry["fetched"] == QUICK.registry_cold_loads
    for key in ("registry", "disk", "registry_load", "disk_load"):
        assert cold_registry[key]["n"] == QUICK.registry_cold_loads, key
        _positive(cold_registry[key], "p50_ms")
    _positive(cold_registry, "ratio")
    assert {v.name for v in judge_registry(result)} <= names and len(judge_registry(result)) == 2

    # The registry at an edge site: each measurement's shape, never its figures.
    edge = result["edge"]
    announced = edge["announce"]
    assert announced["versions"] == announced["announce"]["n"] == QUICK.edge_announce_versions
    assert announced["floor_write_to_site_mirror"]["n"] == QUICK.edge_announce_versions * QUICK.edge_floor_samples
    _positive(announced["announce"], "p50_ms")
    _positive(announced["floor_write_to_site_mirror"], "p50_ms")
    cold_edge = edge["cold_load"]
    assert cold_edge["loads"] == cold_edge["site"]["n"] == cold_edge["disk"]["n"] == QUICK.edge_cold_loads
    _positive(cold_edge, "ratio")
    rounds = edge["catch_up"]["rounds"]
    assert [r["publishes"] for r in rounds] == [QUICK.edge_catch_up_publishes] * len(QUICK.edge_catch_up_holds_s)
    assert all(r["held_s"] >= hold for r, hold in zip(rounds, QUICK.edge_catch_up_holds_s, strict=True))
    assert {v.name for v in judge_edge(result)} <= names and len(judge_edge(result)) == 2
    assert "The registry at an edge site" in output.with_suffix(".md").read_text()

    # The tree check is a reported figure too: both trees unpacked and digested each round (a digest that is not
    # the packed folder's stops the run), the large archive about the size asked for.
    checked = result["tree_check"]
    assert checked["size_target_bytes"] == QUICK.tree_check_bytes and checked["filesystem"]
    assert 0.8 * QUICK.tree_check_bytes <= checked["large"]["archive_bytes"] <= 1.2 * QUICK.tree_check_bytes
    assert checked["large"]["files"] > 400 and checked["small"]["files"] >= 2
    assert checked["small"]["example"] == "examples/extensions/taskservs/kubernetes/1.28.0"
    for tree, runs in (("large", QUICK.tree_check_runs), ("small", QUICK.tree_check_runs * SMALL_RUNS_FACTOR)):
        assert checked[tree]["runs"] == runs
        for step in ("unpack", "tree_digest", "sha256"):
            assert checked[tree][step]["n"] == runs, (tree, step)
            _positive(checked[tree][step], "p50_ms", "mb_per_s")
    assert "Tree check: the tree digest" in output.with_suffix(".md").read_text()

    # Durability is a reported figure, not a target: its shape is checked here, never its numbers.
    durability = result["durability"]
    assert durability["rounds"] == QUICK.durability_rounds
    assert durability["servers"]["always"]["sync_always"] is True  # as each server's /varz says
    assert durability["servers"]["default"]["sync_always"] is False
    assert durability["filesystem"]["always"] and durability["filesystem"]["default"]
    assert [sorted(turn) for turn in durability["order"]] == [["always", "default"]] * QUICK.durability_rounds
    assert durability["order"][0] != durability["order"][1]  # the servers' order turns each round
    counts = {
        "kv_put": QUICK.durability_puts,
        "publish": QUICK.durability_publishes,
        "publish_async": QUICK.durability_publishes,
    }
    for server in ("always", "default"):
        for kind, count in counts.items():
            figures = durability[server][kind]
            assert [r["n"] for r in figures["rounds"]] == [count] * QUICK.durability_rounds, (server, kind)
            _positive(figures, "total_ms", "per_message_ms")
        for kind in ("kv_put", "publish"):
            _positive(durability[server][kind], "p50_ms", "p90_ms", "p99_ms")
    assert durability["bare_fsync"]["n"] == QUICK.durability_puts
    _positive(durability["bare_fsync"], "p50_ms", "p99_ms")
    assert set(durability["ratio"]) == {
        "kv_put_p50",
        "kv_put_p90",
        "kv_put_p99",
        "publish_total",
        "publish_p50",
        "publish_p99",
        "publish_async_total",
    }
    _positive(durability["ratio"], *durability["ratio"])
    assert not any("sync_interval" in name or "durability" in name for name in names)

    assert "cached load p99 while discovers and cold loads run" in names
    assert any(n.startswith("repeated discover") for n in names) and any("--with-dependencies" in n for n in names)
    # The verdicts written are the ones the figures written give, and the table shows each of them.
    assert result["targets"] == [v.as_dict() for v in judge(result)]
    table = output.with_suffix(".md").read_text()
    assert "| target | figure | goal | result |" in table
    assert "**durability: sync_interval always vs default**" in table
    assert "| figure | always | default | always / default |" in table
    for t in result["targets"]:
        assert verdict_row(t, t["passed"]) in table, t
    flipped = [{**t, "passed": not t["passed"]} for t in result["targets"]]
    assert all(verdict_row(t, t["passed"]) in render({**result, "targets": flipped}) for t in flipped)


def verdict_row(target: dict[str, Any], passed: bool) -> str:
    return f"| {target['name']} | {target['figure']} | {target['target']} | {'PASS' if passed else 'MISS'} |"


def figures(
    *,
    ratio: float = RATIO_TARGET,
    p99_us: float = P99_TARGET_US,
    cold_ratio: float = COLD_TARGET,
    rss_mb: float = RSS_TARGET_MB,
    single_flight: bool = True,
    all_succeeded: bool = True,
) -> dict[str, Any]:
    """The part of a result that `judge` reads; by default every figure exactly at its goal."""

    def level(n: int) -> dict[str, Any]:
        return {"in_flight": n, "ratio": ratio, "service": {"rps": 900.0, "p99_us": p99_us}, "echo": {"rps": 1000.0}}

    return {
        "cached": {"levels": [level(1), level(16)]},
        "cold": {"ratio_to_bare_nu": cold_ratio, "service_reload": {"p50_ms": 45.0}, "bare_nu": {"p50_ms": 30.0}},
        "rss": {"requests": 10_000, "after_requests_mb": rss_mb},
        "simultaneous": {
            "requests": 64,
            "repetitions": [{"single_flight": single_flight, "cold_delta": 1, "coalesced_delta": 60, "hits_delta": 3}],
            "wall_ms_p50": 50.0,
            "single_flight": single_flight,
            "all_succeeded": all_succeeded,
        },
    }


THROUGHPUT_1 = "cached throughput, 1 in flight"
THROUGHPUT_16 = "cached throughput, 16 in flight"
P99 = "cached p99, 1 in flight"
COLD = "cold load (reload p50) / bare `nu -n` start"
RSS = "service RSS after 10,000 requests"
SIMULTANEOUS = "64 simultaneous cold requests, one key"


def test_figures_at_their_goals_pass() -> None:
    verdicts = {v.name: v.passed for v in judge(figures())}
    assert verdicts == dict.fromkeys([THROUGHPUT_1, P99, THROUGHPUT_16, COLD, RSS, SIMULTANEOUS], True)


@pytest.mark.parametrize(
    ("past_the_goal", "missed"),
    [
        ({"ratio": RATIO_TARGET - 0.01}, {THROUGHPUT_1, THROUGHPUT_16}),
        ({"p99_us": P99_TARGET_US + 0.1}, {P99}),
        ({"cold_ratio": COLD_TARGET + 0.01}, {COLD}),
        ({"rss_mb": RSS_TARGET_MB + 0.1}, {RSS}),
        ({"rss_mb": 0.0}, {RSS}),  # no figure is no pass
        ({"single_flight": False}, {SIMULTANEOUS}),
        ({"all_succeeded": False}, {SIMULTANEOUS}),
    ],
    ids=["throughput", "p99", "cold", "rss", "no rss figure", "not single-flight", "a request failed"],
)
def test_a_figure_past_its_goal_misses_that_target_alone(past_the_goal: dict[str, Any], missed: set[str]) -> None:
    verdicts = judge(figures(**past_the_goal))
    assert {v.name for v in verdicts if not v.passed} == missed
    assert len(verdicts) == 6


ANNOUNCE = "publish on node 1 to `extensions.loaded` (published) from a loader on node 2"
REGISTRY_COLD = "cold load from the registry (fetch included) / from disk"


def registry_figures(
    *, announce_ms: float = ANNOUNCE_TARGET_MS - 0.1, ratio: float = REGISTRY_COLD_TARGET
) -> dict[str, Any]:
    """The part of a result that `judge_registry` reads; by default each figure at its goal."""

    def summary(p50: float) -> dict[str, float]:
        return {"n": 10, "p50_ms": p50, "p90_ms": p50 * 1.2}

    return {
        "registry_announce": {
            "announce": summary(announce_ms),
            "publish": summary(10.0),
            "floor_kv_put_to_watch": summary(1.5),
        },
        "registry_cold_load": {"loads": 15, "ratio": ratio, "registry": summary(30.0), "disk": summary(20.0)},
    }


def test_registry_figures_at_their_goals_pass() -> None:
    assert {v.name: v.passed for v in judge_registry(registry_figures())} == {ANNOUNCE: True, REGISTRY_COLD: True}
    assert [v.name for v in judge({**figures(), **registry_figures()})][-2:] == [ANNOUNCE, REGISTRY_COLD]


@pytest.mark.parametrize(
    ("past_the_goal", "missed"),
    [
        ({"announce_ms": ANNOUNCE_TARGET_MS}, {ANNOUNCE}),
        ({"announce_ms": 0.0}, {ANNOUNCE}),  # no figure is no pass
        ({"ratio": REGISTRY_COLD_TARGET + 0.01}, {REGISTRY_COLD}),
        ({"ratio": 0.0}, {REGISTRY_COLD}),
    ],
    ids=["announce", "no announce figure", "cold ratio", "no cold ratio"],
)
def test_a_registry_figure_past_its_goal_misses_that_target_alone(
    past_the_goal: dict[str, Any], missed: set[str]
) -> None:
    verdicts = judge_registry(registry_figures(**past_the_goal))
    assert {v.name for v in verdicts if not v.passed} == missed
