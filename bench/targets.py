"""The targets from the issue: their goals, and each judged on a result as a verdict (pass or miss)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RATIO_TARGET = 0.9  # cached throughput, service / echo, at each level
P99_TARGET_US = 1000.0  # cached p99 at 1 in flight
COLD_TARGET = 1.0  # a cold load / one bare Nushell start
RSS_TARGET_MB = 100.0  # after 10,000 requests
BURST_TARGET = 0.6  # different cold loads at once, total time: with spares / with nushell.spares = 0
SPARES_RSS_TARGET_MB = 60.0  # the service itself, its spares waiting
DEPENDENCIES_TARGET = 2.0  # ci-cd with its dependencies from an empty cache / one cold load
DISCOVER_TARGET_MS = 10.0  # a repeated discover of the generated tree, p50
CONTENTION_P99_TARGET_MS = 2.0  # cached loads while discovers and cold loads run
ANNOUNCE_TARGET_MS = 250.0  # publish() on node 1 until a loader on node 2 announces the version, p50
REGISTRY_COLD_TARGET = 1.5  # a cold load from the registry, its fetch included / the same from disk, p50


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    figure: str
    target: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(result: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    for level in result["cached"]["levels"]:
        n = level["in_flight"]
        out.append(
            Verdict(
                f"cached throughput, {n} in flight",
                f"{level['ratio']:.2f}x echo ({level['service']['rps']:,.0f} vs {level['echo']['rps']:,.0f} req/s)",
                f">= {RATIO_TARGET}x echo",
                level["ratio"] >= RATIO_TARGET,
            )
        )
        if n == 1:
            p99 = level["service"]["p99_us"]
            out.append(
                Verdict(
                    "cached p99, 1 in flight",
                    f"{p99 / 1000:.3f} ms",
                    f"<= {P99_TARGET_US / 1000:g} ms",
                    p99 <= P99_TARGET_US,
                )
            )
    cold = result["cold"]
    out.append(
        Verdict(
            "cold load (reload p50) / bare `nu -n` start",
            f"{cold['ratio_to_bare_nu']:.2f}x ({cold['service_reload']['p50_ms']:.1f} ms vs "
            f"{cold['bare_nu']['p50_ms']:.1f} ms)",
            f"<= {COLD_TARGET}x",
            cold["ratio_to_bare_nu"] <= COLD_TARGET,
        )
    )
    rss = result["rss"]
    out.append(
        Verdict(
            f"service RSS after {rss['requests']:,} requests",
            f"{rss['after_requests_mb']:.1f} MB",
            f"<= {RSS_TARGET_MB:g} MB",
            0 < rss["after_requests_mb"] <= RSS_TARGET_MB,
        )
    )
    out += _spare_verdicts(result)
    sim = result["simultaneous"]
    worst = sim["repetitions"][0] if sim["repetitions"] else {}
    for rep in sim["repetitions"]:
        if not rep["single_flight"]:
            worst = rep
    out.append(
        Verdict(
            f"{sim['requests']} simultaneous cold requests, one key",
            f"cold +{worst.get('cold_delta')}, coalesced+hits +"
            f"{worst.get('coalesced_delta', 0) + worst.get('hits_delta', 0)}, {sim['wall_ms_p50']:.1f} ms",
            f"cold +1, coalesced+hits +{sim['requests'] - 1}",
            sim["single_flight"] and sim["all_succeeded"],
        )
    )
    out += _issue_10(result)
    out += judge_registry(result)
    out += judge_edge(result)
    return out


def judge_registry(result: dict[str, Any]) -> list[Verdict]:
    """The registry on a cluster: a publish announced by a loader on another node, and a cold load from the
    registry beside the same from disk."""
    out: list[Verdict] = []
    a = result.get("registry_announce")
    if a:
        p50 = a["announce"]["p50_ms"]
        out.append(
            Verdict(
                "publish on node 1 to `extensions.loaded` (published) from a loader on node 2",
                f"{p50:.1f} ms p50, p90 {a['announce']['p90_ms']:.1f} (n {a['announce']['n']}; publish() "
                f"{a['publish']['p50_ms']:.1f} ms; floor, a KV put on node 1 seen by a watch on node 2: "
                f"{a['floor_kv_put_to_watch']['p50_ms']:.1f} ms)",
                f"p50 < {ANNOUNCE_TARGET_MS:g} ms",
                0 < p50 < ANNOUNCE_TARGET_MS,
            )
        )
    c = result.get("registry_cold_load")
    if c:
        out.append(
            Verdict(
                "cold load from the registry (fetch included) / from disk",
                f"{c['ratio']:.2f}x ({c['registry']['p50_ms']:.1f} ms vs {c['disk']['p50_ms']:.1f} ms, "
                f"p50 of {c['loads']})",
                f"<= {REGISTRY_COLD_TARGET:g}x",
                0 < c["ratio"] <= REGISTRY_COLD_TARGET,
            )
        )
    return out


def judge_edge(result: dict[str, Any]) -> list[Verdict]:
    """The registry at an edge site: a publish at the hub announced by a loader at the site, and a cold load at
    the site from its mirror beside the same from disk (`bench/edge.py`)."""
    edge = result.get("edge")
    if not edge:
        return []
    a, c = edge["announce"], edge["cold_load"]
    return [
        Verdict(
            "publish at the hub to `extensions.loaded` (published) from a loader at the edge site",
            f"{a['announce']['p50_ms']:.1f} ms p50, p90 {a['announce']['p90_ms']:.1f} (n {a['announce']['n']}; "
            f"publish() {a['publish']['p50_ms']:.1f} ms; floor, a bare write at the hub seen through the site's "
            f"mirror: {a['floor_write_to_site_mirror']['p50_ms']:.1f} ms)",
            f"p50 < {ANNOUNCE_TARGET_MS:g} ms",
            0 < a["announce"]["p50_ms"] < ANNOUNCE_TARGET_MS,
        ),
        Verdict(
            "cold load at the edge site from its mirror / from disk",
            f"{c['ratio']:.2f}x ({c['site']['p50_ms']:.1f} ms vs {c['disk']['p50_ms']:.1f} ms, p50 of {c['loads']})",
            f"<= {REGISTRY_COLD_TARGET:g}x",
            0 < c["ratio"] <= REGISTRY_COLD_TARGET,
        ),
    ]


def _issue_10(result: dict[str, Any]) -> list[Verdict]:
    """No request waits behind heavy work: dependencies in parallel, discovers answered from what is known."""
    out: list[Verdict] = []
    deps = result.get("dependencies")
    if deps:
        out.append(
            Verdict(
                "`load cluster ci-cd --with-dependencies`, empty cache / one cold load",
                f"{deps['ratio_to_cold_load']:.2f}x ({deps['p50_ms']:.1f} ms vs {deps['one_cold_load_ms']:.1f} ms, "
                f"{max(deps['cold_loads'], default=0)} cold loads)",
                f"<= {DEPENDENCIES_TARGET:g}x",
                0 < deps["ratio_to_cold_load"] <= DEPENDENCIES_TARGET,
            )
        )
    d = result.get("discovery")
    if d:
        p50 = d["repeated"]["p50_ms"]
        out.append(
            Verdict(
                f"repeated discover, {d['names']:,} x {d['versions']} unchanged",
                f"{p50:.1f} ms p50 (first {d['first_ms']:.0f} ms)",
                f"<= {DISCOVER_TARGET_MS:g} ms",
                0 < p50 <= DISCOVER_TARGET_MS,
            )
        )
    c = result.get("contention")
    if c:
        load, other = c["cached_load"], c["other_client"]
        out.append(
            Verdict(
                "cached load p99 while discovers and cold loads run",
                f"{load['p99_ms']:.3f} ms (p50 {load['p50_ms']:.3f}, max {load['max_ms']:.1f}; echo under the same "
                f"churn p99 {c['echo_under_churn']['p99_ms']:.3f}; {other['discovers']} discovers, "
                f"{other['reloads']} reloads)",
                f"<= {CONTENTION_P99_TARGET_MS:g} ms",
                load["p99_ms"] <= CONTENTION_P99_TARGET_MS
                and load["errors"] == 0
                and other["discovers"] > 0
                and other["reloads"] > 0
                and other["errors"] == 0,
            )
        )
    return out


def _spare_verdicts(result: dict[str, Any]) -> list[Verdict]:
    """The spare processes' targets: a burst of different cold loads, and the service's memory beside them."""
    out: list[Verdict] = []
    burst = result.get("burst")
    if burst:
        out.append(
            Verdict(
                f"{burst['loads']} different cold loads at once, total: spares / spares = 0",
                f"{burst['ratio']:.2f}x ({burst['spares_p50_ms']:.0f} ms vs {burst['no_spares_p50_ms']:.0f} ms)",
                f"<= {BURST_TARGET}x",
                0 < burst["ratio"] <= BURST_TARGET,
            )
        )
    memory = result.get("spare_memory")
    if memory:
        out.append(
            Verdict(
                f"service RSS with {memory['spares']} spares idle",
                f"{memory['service_mb']:.1f} MB (the spares: RSS {memory['spares_rss_mb']:.1f} MB, "
                f"PSS {memory['spares_pss_mb']:.1f} MB)",
                f"<= {SPARES_RSS_TARGET_MB:g} MB",
                0 < memory["service_mb"] <= SPARES_RSS_TARGET_MB,
            )
        )
    return out
