"""How the client subcommands' results read in a terminal (`--json` prints the reply's data instead); with
`--all`, one table of every instance's answer."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def event_line(subject: str, e: dict[str, Any]) -> str:
    when = e.get("timestamp", "")[11:19]
    if subject.endswith(".loaded"):
        m = e["extension"]["metadata"]
        return (
            f"{when} loaded   {m['extension_type']}:{m['name']}:{m['version']}  reason={e['reason']} "
            f"{e['duration_ms']:.1f} ms  instance={e['instance_id']}"
        )
    return (
        f"{when} unloaded {e['extension_type']}:{e['name']}:{e['version']}  reason={e['reason']}  "
        f"instance={e['instance_id']}"
    )


def readable(args: argparse.Namespace, data: Any, elapsed_ms: float) -> str:
    action = args.action
    if action in ("load", "reload"):
        m = data["metadata"]
        deps = ", ".join(m["dependencies"]) or "none"
        verb = "reloaded" if action == "reload" else "loaded"
        return "\n".join(
            [
                f"{m['extension_type']} {m['name']} {m['version']} {verb} in {elapsed_ms:.1f} ms",
                f"  {m['description']}",
                f"  path:         {data['path']}",
                f"  digest:       {data['digest']}",
                f"  dependencies: {deps}",
                f"  loaded at:    {data['loaded_at']}",
            ]
        )
    if action == "list":
        rows = [
            (e["metadata"]["extension_type"], e["metadata"]["name"], e["metadata"]["version"], e["loaded_at"])
            for e in data
        ]
        return table(("TYPE", "NAME", "VERSION", "LOADED AT"), rows) if rows else "nothing is loaded"
    if action == "status":
        where = f"{args.type} {args.name}"
        return f"{where}: loaded ({', '.join(data['versions'])})" if data["loaded"] else f"{where}: not loaded"
    if action == "discover":
        none = {"description": "(pre-releases only: name a version to load one)"}  # no latest without a stable one
        rows = [(a["extension_type"], a["name"], _versions(a), (a["latest"] or none)["description"]) for a in data]
        return table(("TYPE", "NAME", "VERSIONS", "DESCRIPTION"), rows) if rows else "no extensions found"
    if action == "stats":
        c, loads = data["cache"], data["loads"]
        return "\n".join(
            [
                f"instance {data['instance_id']}, up {data['uptime_s']:.0f} s, nushell {data['nushell']['version']}",
                f"cache: {c['size']}/{c['capacity']} entries, {c['hits']} hits, {c['misses']} misses "
                f"(hit ratio {c['hit_ratio']:.2f}), {c['evictions']} evictions",
                f"loads: {loads['total']} total, {loads['cold']} cold, {loads['failed']} failed, "
                f"{loads['coalesced']} coalesced; {data['in_flight']} in flight",
                *_registry_line(data.get("registry")),
            ]
        )
    if action == "clear":
        return f"cleared {counted(data['cleared'], 'entry')}"
    if action == "graph":
        if "text" in data:
            return str(data["text"]).rstrip("\n")
        return "install order:\n" + "\n".join(f"  {i + 1}. {node}" for i, node in enumerate(data["order"]))
    return json.dumps(data, indent=2)


def counted(n: int, noun: str) -> str:
    """`1 archive`, `3 archives`; `1 entry`, `2 entries`."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def readable_fleet(args: argparse.Namespace, answers: Sequence[dict[str, Any]]) -> str:
    """Every instance's answer (`{"instance_id", "data"}`, sorted by instance id) as one table."""
    action = args.action
    n = counted(len(answers), "instance")
    if action == "list":
        rows: list[tuple[str, ...]] = []
        for a in answers:
            rows += [
                (a["instance_id"], e["metadata"]["extension_type"], e["metadata"]["name"], e["metadata"]["version"])
                for e in a["data"]
            ] or [(a["instance_id"], "-", "nothing loaded", "")]
        return f"{n} answered\n" + table(("INSTANCE", "TYPE", "NAME", "VERSION"), rows)
    if action == "status":
        having = sum(1 for a in answers if a["data"]["loaded"])
        rows = [
            (a["instance_id"], f"loaded ({', '.join(a['data']['versions'])})" if a["data"]["loaded"] else "not loaded")
            for a in answers
        ]
        title = f"{args.type} {args.name}: loaded on {having} of {n}"
        return title + "\n" + table(("INSTANCE", "STATUS"), rows)
    if action == "stats":
        rows = []
        for a in answers:
            d = a["data"]
            c, loads = d["cache"], d["loads"]
            counts = (c["hits"], c["misses"], loads["total"], loads["cold"], loads["failed"], d["in_flight"])
            rows.append((a["instance_id"], f"{d['uptime_s']:.0f} s", f"{c['size']}/{c['capacity']}", *map(str, counts)))
        header = ("INSTANCE", "UP", "CACHED", "HITS", "MISSES", "LOADS", "COLD", "FAILED", "IN FLIGHT")
        return f"{n} answered\n" + table(header, rows)
    if action == "clear":
        total = sum(a["data"]["cleared"] for a in answers)
        rows = [(a["instance_id"], str(a["data"]["cleared"])) for a in answers]
        return f"cleared {counted(total, 'entry')} on {n}\n" + table(("INSTANCE", "CLEARED"), rows)
    return json.dumps(list(answers), indent=2)


def _versions(available: dict[str, Any]) -> str:
    """Newest first, each marked where it is not a plain version on this instance's disk:
    `1.29.0 (registry)`, `1.28.1 (registry, yanked)`, `2.0.0 (registry, untrusted)`."""
    sources = available.get("sources") or [{"version": v, "source": "disk"} for v in available["versions"]]
    out = []
    for s in sources:
        marks = [s["source"]] if s["source"] != "disk" else []
        marks += ["yanked"] * bool(s.get("yanked")) + ["untrusted"] * (not s.get("trusted", True))
        out.append(f"{s['version']} ({', '.join(marks)})" if marks else s["version"])
    return ", ".join(out)


def _registry_line(registry: dict[str, Any] | None) -> list[str]:
    if registry is None:
        return []
    state = "reachable" if registry["reachable"] else f"UNREACHABLE ({registry.get('last_error') or '?'})"
    lines = [
        f"registry: {state}; {counted(registry['extensions'], 'extension')}, "
        f"{counted(registry['versions'], 'version')} in the index; "
        f"{registry['fetched']} fetched, {registry['refused']} refused; auto_update "
        f"{'on' if registry['auto_update'] else 'off'}"
    ]
    ignored = [f"{registry[k]} {k}" for k in ("rollbacks", "unsigned") if registry.get(k)]
    if ignored:
        lines.append(f"registry: ignored what no trusted key signed: {', '.join(ignored)}")
    if registry.get("stale"):
        lines.append(f"registry: STALE ({registry['stale']})")
    elif registry.get("view_age_s") is not None:
        lines.append(f"registry: index vouched for {registry['view_age_s']:.0f} s ago")
    return lines


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)
