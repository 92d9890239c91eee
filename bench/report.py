"""The Markdown a run prints and writes beside its JSON: the verdicts' table and the figures of every phase."""

from __future__ import annotations

from typing import Any

from . import durability, registry_fetch, tree_check
from .edge_report import render_edge
from .targets import Verdict, judge


def render_run(result: dict[str, Any]) -> str:
    """The table and figures of `render`, then the registry fetch's, the tree check's, durability's and the edge
    site's."""
    parts = [render(result)]
    if "registry_fetch" in result:
        parts.append(registry_fetch.render(result["registry_fetch"]))
    if "tree_check" in result:
        parts.append(tree_check.render(result["tree_check"]))
    if "durability" in result:
        parts.append(durability.render(result["durability"]))
    if "edge" in result:
        parts.append(render_edge(result))
    return "\n\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    verdicts = [Verdict(**v) for v in result["targets"]] if "targets" in result else judge(result)
    parts = [
        f"## extension-loader benchmark, {result['started_at']}",
        "",
        f"{m['nproc']} CPUs ({m['cpu_model']}), load average {m['loadavg_start'][0]} at start, "
        f"Python {m['python']}, nats-py {m['nats_py']}, {m['nats_server']}, nu {m['nu']}, git {m['git']}; "
        f"{result.get('duration_s', '?')} s",
        "",
        *(
            ["**Quick mode: sizes too small for the figures to mean anything; this checks the machinery.**", ""]
            if result.get("mode") == "quick"
            else []
        ),
        _table(
            ["target", "figure", "goal", "result"],
            [[v.name, v.figure, v.target, "PASS" if v.passed else "MISS"] for v in verdicts],
        ),
        "",
        "Cached `extensions.load` vs the echo responder (medians of "
        f"{result['sizes']['repetitions']} runs; latency in ms; CPU = the responder's user+system time per request, "
        "from /proc, steadier than req/s on a shared machine). `echo+CT` is the echo responder replying with the "
        "`Content-Type` header the contract requires of every reply: what that header alone costs.",
        "",
        _table(
            [
                "in flight",
                "echo req/s",
                "echo+CT req/s",
                "service req/s",
                "ratio",
                "ratio to echo+CT",
                "echo p50",
                "echo p99",
                "svc p50",
                "svc p99",
                "echo CPU µs",
                "echo+CT CPU µs",
                "svc CPU µs",
                "client CPU µs",
            ],
            [
                [
                    str(lv["in_flight"]),
                    f"{lv['echo']['rps']:,.0f}",
                    f"{lv['echo_ct']['rps']:,.0f}",
                    f"{lv['service']['rps']:,.0f}",
                    f"{lv['ratio']:.2f}",
                    f"{lv['ratio_to_echo_ct']:.2f}",
                    f"{lv['echo']['p50_us'] / 1000:.3f}",
                    f"{lv['echo']['p99_us'] / 1000:.3f}",
                    f"{lv['service']['p50_us'] / 1000:.3f}",
                    f"{lv['service']['p99_us'] / 1000:.3f}",
                    f"{lv['echo']['responder_cpu_us_per_request']:.1f}",
                    f"{lv['echo_ct']['responder_cpu_us_per_request']:.1f}",
                    f"{lv['service']['responder_cpu_us_per_request']:.1f}",
                    f"{lv['service']['client_cpu_us_per_request']:.1f}",
                ]
                for lv in result["cached"]["levels"]
            ],
        ),
    ]
    cold = result["cold"]
    parts += [
        "",
        "Cold loads, ms (sequential, interleaved; p50 / p90):",
        "",
        _table(
            ["what", "p50", "p90", "n"],
            [
                [label, f"{cold[key]['p50_ms']:.1f}", f"{cold[key]['p90_ms']:.1f}", str(cold[key]["n"])]
                for label, key in [
                    ("`nu -n -c 1` (bare start, the target's yardstick)", "bare_nu"),
                    ("`nu -n --no-std-lib -c 1`", "bare_nu_no_std_lib"),
                    ("loader module parsed, no subcommand", "loader_parse_only"),
                    ("loader `module load`, direct", "loader_direct"),
                    ("loader `module load`, direct, under prlimit", "loader_direct_prlimit"),
                    ("the service's runner (`duration_ms` of the event)", "runner"),
                    ("`extensions.reload` through the service", "service_reload"),
                ]
                if cold.get(key, {}).get("n")
            ],
        ),
        "",
        "Where a reload's p50 goes, ms: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in cold["breakdown_ms"].items() if v is not None)
        + ". With spares, a run starts at the hand-over to a spare that had started Nushell and parsed the module"
        " before the request: the runner's time is less than the same load run directly (process handling "
        "comes out negative), and the rest is the loader's own work.",
    ]
    parts += _spare_lines(result)
    d = result["discovery"]
    rss = result["rss"]
    parts += [
        "",
        f"Discovery on {d['names']:,} x {d['versions']} ({d['found']:,} found, reply {d['reply_bytes'] / 1024:,.0f} "
        f"KiB): first {d['first_ms']:.1f} ms, repeated p50 {d['repeated']['p50_ms']:.1f} ms, cold load of a name p50 "
        f"{d['cold_load']['p50_ms']:.1f} ms (p90 {d['cold_load']['p90_ms']:.1f}); a cached load sent while discovers "
        f"run waits up to {d['cached_load_during_discover']['max_ms']:.1f} ms (p50 "
        f"{d['cached_load_during_discover']['p50_ms']:.1f}); that service's RSS "
        f"{d['rss_kb'].get('VmRSS', 0) / 1024:.1f} MB.",
        f"Service RSS: {rss['ready_kb'].get('VmRSS', 0) / 1024:.1f} MB when ready, "
        f"{rss['after_requests_mb']:.1f} MB after {rss['requests']:,} requests, "
        f"{rss.get('end_kb', {}).get('VmRSS', 0) / 1024:.1f} MB at the end (peak "
        f"{rss.get('end_kb', {}).get('VmHWM', 0) / 1024:.1f} MB).",
    ]
    parts += _render_issue_10(result)
    parts += render_registry(result)
    return "\n".join(parts)


def render_registry(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    a = result.get("registry_announce")
    if a:
        announce, floor = a["announce"], a["floor_kv_put_to_watch"]
        lines += [
            "",
            f"Registry on a three-node cluster (R3 buckets), {a['versions']} versions published on node 1, each "
            f"loaded and announced by a loader with auto_update on node 2 (its spares ready): publish() to the "
            f"`extensions.loaded` event at a subscriber on node 1 p50 {announce['p50_ms']:.1f} ms, p90 "
            f"{announce['p90_ms']:.1f}, max {announce['max_ms']:.1f}; of which publish() itself p50 "
            f"{a['publish']['p50_ms']:.1f} ms and the loader's own load (the event's `duration_ms`: fetch, unpack and "
            f"Nushell run) p50 {a['loader_load']['p50_ms']:.1f} ms (prepare, not timed with them: p50 "
            f"{a['prepare']['p50_ms']:.1f} ms). The floor, in the same run: a "
            f"bare Key-Value put on node 1 until a watch on node 2 has it, p50 {floor['p50_ms']:.2f} ms, p90 "
            f"{floor['p90_ms']:.2f} (n {floor['n']}).",
        ]
    c = result.get("registry_cold_load")
    if c:
        lines += [
            "",
            f"Cold loads of {c['loads']} distinct versions, interleaved, both loaders' spares ready before each: from "
            f"the registry (empty cache, archive fetched; {c['fetched']} fetched) p50 {c['registry']['p50_ms']:.1f} ms "
            f"(p90 {c['registry']['p90_ms']:.1f}), from disk p50 {c['disk']['p50_ms']:.1f} ms (p90 "
            f"{c['disk']['p90_ms']:.1f}): {c['ratio']:.2f}x. The loaders' own time (the event's `duration_ms`, without "
            f"the request's way there and back): {c['registry_load']['p50_ms']:.1f} ms from the registry (fetch, "
            f"unpack and Nushell run), {c['disk_load']['p50_ms']:.1f} ms from disk.",
        ]
    return lines


def _spare_lines(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    burst = result.get("burst")
    if burst:
        lines += [
            "",
            f"{burst['loads']} different cold loads sent at once, after `extensions.cache.clear`, until the last "
            f"reply (median of {burst['repetitions']}, interleaved): {burst['spares_p50_ms']:.0f} ms with "
            f"{burst['spares']} spares, {burst['no_spares_p50_ms']:.0f} ms with `nushell.spares=0` "
            f"(runs: {', '.join(f'{v:.0f}' for v in burst['spares_wall_ms'])} / "
            f"{', '.join(f'{v:.0f}' for v in burst['no_spares_wall_ms'])}).",
        ]
        if "spares_cpu" in burst:
            with_spares, without = burst["spares_cpu"], burst["no_spares_cpu"]
            lines[-1] += (
                f" Their Nushell processes used {with_spares['nushell_cpu_ms']:.0f} / "
                f"{without['nushell_cpu_ms']:.0f} ms of CPU: on {with_spares['cpus']} cores no run of them can take "
                f"less than {with_spares['cpu_floor_ms']:.0f} / {without['cpu_floor_ms']:.0f} ms."
            )
    memory = result.get("spare_memory")
    if memory:
        each = ", ".join(
            f"{s.get('VmRSS', 0) / 1024:.1f} MB (PSS {s.get('Pss', 0) / 1024:.1f})" for s in memory["spare_processes"]
        )
        lines += [
            "",
            f"With {memory['spares']} spares waiting: the service {memory['service_mb']:.1f} MB RSS; "
            f"each spare {each or 'none'}.",
        ]
    return lines


def _render_issue_10(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    deps = result.get("dependencies")
    if deps:
        lines.append(
            f"`load cluster ci-cd --with-dependencies` from an empty cache: p50 {deps['p50_ms']:.1f} ms "
            f"(min {deps['min_ms']:.1f}, max {deps['max_ms']:.1f}, n {deps['n']}), "
            f"{max(deps['cold_loads'], default=0)} cold loads each; one cold load {deps['one_cold_load_ms']:.1f} ms."
            + (
                f" Their Nushell processes used {deps['nushell_cpu_ms']:.0f} ms of CPU (median): on {deps['cpus']} "
                f"cores no run of them can take less than {deps['cpu_floor_ms']:.0f} ms."
                if "nushell_cpu_ms" in deps
                else ""
            )
        )
    c = result.get("contention")
    if c:
        load, other = c["cached_load"], c["other_client"]
        every = c.get("discover_every_s", 0)
        pace = f"one every {every * 1000:g} ms" if every else "back to back"
        lines.append(
            f"Contention ({c['seconds']:g} s on the generated tree): {load['n']:,} cached loads, one in flight, p50 "
            f"{load['p50_ms']:.3f} ms, p99 {load['p99_ms']:.3f} ms, max {load['max_ms']:.1f} ms, while another "
            f"client ran {other['discovers']} discovers (p50 {other['discover_p50_ms']:.1f} ms; {pace}) and "
            f"{other['reloads']} reloads (p50 {other['reload_p50_ms']:.1f} ms) back to back; errors "
            f"{load['errors'] + other['errors']}. The echo responder under the same churn (the floor the machine "
            f"sets): p50 {c['echo_under_churn']['p50_ms']:.3f} ms, p99 "
            f"{c['echo_under_churn']['p99_ms']:.3f} ms, max {c['echo_under_churn']['max_ms']:.1f} ms."
        )
    return lines
