"""The edge soak's judgement of what it saw: announcements per loader, digests served, the loaders' audit lines.

Announcements: every version published during the soak is expected once from each auto-updating loader, by its
`extensions.loaded` with reason `published` (the README's rule: a newly published version that becomes the latest,
what was published while the loader was stopped included). One exception follows from that rule itself: a version
that reached the site's mirror while a loader was stopped, and was no longer the latest when it came back (a newer
version of the same extension had reached the mirror too), is not announced by that loader; it is counted as
`superseded_while_down`, apart from `missed`. A version announced more than once by one loader is a duplicate.
A version whose automatic load failed because the site's archive mirror did not hold its archive yet, and which a
request then loaded before the automatic load was tried again, is no exception: the retry finds it loaded and
announces it (`published`, `cold` false), so it is expected once like any other (`by_a_request_first` counts them,
within `once`). Apart: a version whose automatic load waited for its archive while a newer version of the same
extension reached the site: the retry loads only the latest, as a loader that comes back does
(`superseded_while_its_archive_was_awaited`). What is left is `missed`.

Digests: each answer and each announcement names a version and the digest of what was loaded; it must be the tree
digest the publisher signed for that version.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .edge_loaders import Incarnation
from .edge_watch import Announcement

_APART = ("superseded_while_down", "superseded_while_its_archive_was_awaited")
MARGIN_S = 2.0  # around a loader's stop and start: a version arriving then may or may not have been seen


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def announcements(
    history: Sequence[Incarnation],
    heard: Iterable[Announcement],
    live: Iterable[tuple[str, str]],
    arrived: Mapping[tuple[str, str], float],
    waited: set[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """One loader's announcements of the versions published during the soak (`live`), judged. `waited`: the
    versions whose automatic load that loader logged it would try again once the archive mirror had their archive
    (`waited_for_archives`); None: any."""
    ids = {incarnation.instance_id for incarnation in history}
    mine = [a for a in heard if a.instance_id in ids]
    counts = Counter((a.name, a.version) for a in mine if a.reason == "published")
    by_request = {(a.name, a.version) for a in mine if a.reason in ("load", "reload") and a.cold}
    late = {(a.name, a.version) for a in mine if a.reason == "published" and not a.cold}
    loaded = by_request | set(counts)
    live = sorted(live)
    downs = [(before.stopped, after.ready) for before, after in itertools.pairwise(history)]
    out: dict[str, Any] = {"expected": len(live), "once": 0, "by_a_request_first": 0, "duplicates": 0, "missed": 0}
    found: dict[str, list[str]] = {kind: [] for kind in (*_APART, "duplicated", "missed")}
    for name, version in live:
        count = counts[(name, version)]
        waited_for = waited is None or (name, version) in waited
        newer_loaded = any(n == name and version_key(v) > version_key(version) for n, v in loaded)
        if count == 1:
            out["once"] += 1
            out["by_a_request_first"] += (name, version) in late and (name, version) in by_request
            continue
        if count > 1:
            out["duplicates"] += count - 1
            kind = "duplicated"
        elif _superseded(name, version, downs, arrived):
            kind = "superseded_while_down"
        elif waited_for and newer_loaded:
            kind = "superseded_while_its_archive_was_awaited"
        else:
            kind = "missed"
        found[kind].append(f"{name} {version}" + (f" x{count}" if count > 1 else ""))
    for kind in _APART:
        out[kind] = len(found[kind])
    out["missed"] = len(found["missed"])
    out["unexpected"] = sum(n for key, n in counts.items() if key not in set(live))
    out["versions"] = {kind: versions[:20] for kind, versions in found.items() if versions}
    out["incarnations"] = len(history)
    return out


def _superseded(
    name: str, version: str, downs: Sequence[tuple[float | None, float]], arrived: Mapping[tuple[str, str], float]
) -> bool:
    """Whether the version reached the mirror while the loader was down and a newer one of the same extension
    had too by the time it served again."""
    at = arrived.get((name, version))
    if at is None:
        return False
    newer = [t for (n, v), t in arrived.items() if n == name and version_key(v) > version_key(version)]
    for stopped, ready in downs:
        if stopped is None:
            continue
        if stopped - MARGIN_S <= at <= ready + MARGIN_S and any(t <= ready + MARGIN_S for t in newer):
            return True
    return False


def waited_for_archives(lines: Iterable[Mapping[str, object]]) -> set[tuple[str, str]]:
    """(name, version) of each automatic load a loader's log says it will try again as the archive mirror grows."""
    found: set[tuple[str, str]] = set()
    for line in lines:
        message = str(line.get("message", ""))
        if message.startswith("auto_update: ") and "trying again as this site's archive mirror" in message:
            key = message.removeprefix("auto_update: ").split(" ", 1)[0]  # taskserv:<name>:<version>
            _, name, version = key.split(":")
            found.add((name, version))
    return found


def bad_digests(served: Iterable[tuple[str, str, str]], signed: Mapping[tuple[str, str], str]) -> list[str]:
    """Each (name, version, digest) served whose digest is not the signed tree digest of that version."""
    return sorted(
        f"{name} {version}: served {digest}, signed {signed.get((name, version))}"
        for name, version, digest in served
        if signed.get((name, version)) != digest
    )


def audit(lines: Iterable[Mapping[str, object]]) -> dict[str, Any]:
    """The loaders' audit lines that refused or ignored something, by action and code, and their log's warnings
    and errors by message (the first 60 characters), for reading."""
    refused: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in lines:
        level = str(line.get("level", ""))
        levels[level] += 1
        if line.get("logger") == "service.audit" and line.get("action") in ("refused", "ignored", "unpacked again"):
            refused[f"{line.get('action')} {line.get('outcome')}"] += 1
        if level in ("warning", "error", "critical"):
            messages[f"{level}: {str(line.get('message', ''))[:60]}"] += 1
    return {
        "refused": dict(refused),
        "untrusted_or_invalid": sum(n for key, n in refused.items() if "untrusted" in key or "invalid" in key),
        "levels": dict(levels),
        "warnings_and_errors": dict(messages.most_common(15)),
    }


def render(result: Mapping[str, Any]) -> str:
    """The soak's figures as Markdown."""
    r, f = result["requests"], result["faults"]
    lines = [
        f"## Edge soak, {result['started_at']}",
        "",
        f"`{result['command']}`: {result['duration_s']} s of faults and requests ({result['asked']} asked), "
        f"then the catch-up; load average {result['loadavg_start']} at start, {result['loadavg_end']} at the end.",
        "",
        "| figure | count |",
        "|---|---|",
        f"| requests sent | {r['sent']} ({_pairs(r['sent_by_kind'])}) |",
        f"| answered | {r['answered']} |",
        f"| answered with a contract error | {r['contract_errors']} ({_pairs(r['contract_errors_by_code'])}) |",
        f"| **lost** (no reply, or no responders) | **{r['lost']}** ({_pairs(r['lost_by_why'])}) |",
        f"| reply time p50 / p99 / max | {r['reply_ms']['p50']} / {r['reply_ms']['p99']} / {r['reply_ms']['max']} ms |",
        f"| faults injected | {sum(f.values())} ({_pairs(f)}){_failed(result)} |",
        f"| versions published at the hub during the soak | {result['published']['live']} "
        f"(+{result['published']['base']} before; publish attempts that failed: "
        f"{_pairs(result['published']['failed_attempts']) or 'none'}) |",
        f"| acknowledged publishes missing from the hub's index | {result['published']['missing_at_hub']} |",
        f"| versions missing from the site's mirror at the end | {result['mirror']['missing_at_site']} "
        f"(caught up {result['mirror']['caught_up_s']} s after the last fault) |",
        _staleness(result["mirror"].get("staleness", {})),
    ]
    for name, judged in result["announcements"].items():
        lines.append(
            f"| {name} (of {judged['expected']}; {judged['incarnations']} starts): announced once (reason "
            f"`published`; of them loaded by a request first) / duplicates / missed; apart: superseded while down / "
            f"superseded while its archive was awaited | {judged['once']} ({judged['by_a_request_first']}) / "
            f"{judged['duplicates']} / {judged['missed']}; {judged['superseded_while_down']} / "
            f"{judged['superseded_while_its_archive_was_awaited']} |"
        )
    checks = result["checks"]
    lines += [
        f"| digests served or announced that are not the signed tree digest | {len(checks['bad_digests'])} |",
        f"| audit lines refusing untrusted or invalid bytes | {checks['audit']['untrusted_or_invalid']} "
        f"({_pairs(checks['audit']['refused']) or 'none refused'}) |",
        f"| final sweep: every version loaded at the site with its signed digest | {checks['sweep']['ok']} of "
        f"{checks['sweep']['versions']} |",
        "",
        "Faults, in order: "
        + "; ".join(f"{d['at_s']} s {d['kind']} {d.get('target', '')} ({d['took_s']} s)" for d in result["fault_log"]),
    ]
    return "\n".join(lines)


def _staleness(staleness: Mapping[str, Any]) -> str:
    """The row of how long the site's mirrors took to hold what the hub held, looked at each second."""
    cells = [
        f"{stream}: p50 {s['p50_s']} s, max {s['max_s']} s ({s['timed']} timed)"
        for stream, s in sorted(staleness.items())
    ]
    return f"| from a sequence at the hub to the site's mirror holding it | {'; '.join(cells) or 'not looked at'} |"


def _failed(result: Mapping[str, Any]) -> str:
    error = result.get("fault_error")
    return f"; then one could not be carried out: {error}" if error else ""


def _pairs(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
