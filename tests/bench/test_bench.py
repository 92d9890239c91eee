"""Smoke test of the benchmark: every phase at tiny sizes against real nats-server, Nushell and the service.

It checks that a run produces a result with every section and sane numbers. It asserts no timing target:
timings belong to `make bench`, not to tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.load import percentile, summary_ms
from bench.run import QUICK, quick


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0
    assert summary_ms([1_000_000, 3_000_000])["p50_ms"] == 2.0


def _positive(section: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert section[key] > 0, f"{key} = {section[key]!r}"


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

    dependencies = result["dependencies"]
    assert dependencies["n"] == QUICK.dependency_loads
    assert dependencies["cold_loads"] == [9] * QUICK.dependency_loads  # ci-cd and its eight, from an empty cache
    _positive(dependencies, "p50_ms", "ratio_to_cold_load")

    contention = result["contention"]
    for figures in (contention["cached_load"], contention["echo_under_churn"]):
        assert figures["n"] > 0 and figures["errors"] == 0
        _positive(figures, "p50_ms", "p99_ms")
    # Each loop of the other client finishes the request it waits on when told to stop: one of each at least.
    assert contention["other_client"]["discovers"] >= 1 and contention["other_client"]["reloads"] >= 1
    assert contention["other_client"]["errors"] == 0

    names = {t["name"] for t in result["targets"]}
    assert "cached p99, 1 in flight" in names
    assert "cached load p99 while discovers and cold loads run" in names
    assert any(n.startswith("repeated discover") for n in names) and any("--with-dependencies" in n for n in names)
    assert all(isinstance(t["passed"], bool) for t in result["targets"])
    table = output.with_suffix(".md").read_text()
    assert "| target |" in table
    assert "PASS" in table or "MISS" in table
