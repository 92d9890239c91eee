"""The Markdown of the edge measurements (`bench/edge.py`): the announcement beside its floor, the cold loads at
the site beside those from disk, and the mirrors' catch-up after each cut of the link."""

from __future__ import annotations

from typing import Any


def render_edge(result: dict[str, Any]) -> str:
    edge = result.get("edge")
    if not edge:
        return ""
    a, c, up = edge["announce"], edge["cold_load"], edge["catch_up"]
    announce, floor, mirrored = a["announce"], a["floor_write_to_site_mirror"], a["record_at_site_mirror"]
    lines = [
        "### The registry at an edge site",
        "",
        f"{edge['layout']}. {a['versions']} versions published at the hub, each loaded and announced by the site's "
        f"loader (auto_update, its spares ready): publish() to its `extensions.loaded` at a client at the site p50 "
        f"{announce['p50_ms']:.1f} ms, p90 {announce['p90_ms']:.1f}, max {announce['max_ms']:.1f}; publish() itself "
        f"p50 {a['publish']['p50_ms']:.1f} ms; the record in the site's index mirror p50 {mirrored['p50_ms']:.1f} ms "
        f"after publish() began. The floor, in the same run: a bare write at the hub (one message into the archive "
        f"stream, three replicas) until a watch on the site's mirror has it, p50 {floor['p50_ms']:.2f} ms, p90 "
        f"{floor['p90_ms']:.2f} (n {floor['n']}).",
        "",
        f"Cold loads of {c['loads']} distinct versions, interleaved, both loaders' spares ready before each: at the "
        f"site (its archive fetched from the site's mirror) p50 {c['site']['p50_ms']:.1f} ms "
        f"(p90 {c['site']['p90_ms']:.1f}), "
        f"from disk on a twin of the site p50 {c['disk']['p50_ms']:.1f} ms (p90 {c['disk']['p90_ms']:.1f}): "
        f"{c['ratio']:.2f}x. The loaders' own time (`duration_ms`): {c['site_load']['p50_ms']:.1f} ms at the site, "
        f"{c['disk_load']['p50_ms']:.1f} ms from disk.",
        "",
        f"The mirrors' catch-up after a cut of the link during which the hub took {up['publishes']} publishes, "
        "from the mend (the mirrors retry with a back-off of their own that grows with the outage: up to two "
        "minutes after a long one):",
        "",
        "| link cut for | leaf link up | index mirror complete | archive mirror complete | last version announced |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['held_s']:.1f} s | {r['relinked_s']:.1f} s | {r['index_caught_up_s']:.1f} s | "
        f"{r['archives_caught_up_s']:.1f} s | {r['last_announced_s']:.1f} s |"
        for r in up["rounds"]
    ]
    return "\n".join(lines)
