"""The cached path: the service's memory under cached loads, and cached `extensions.load` against the echo
responders at each level of requests in flight, with the CPU time each process used per request."""

from __future__ import annotations

import statistics
from typing import Any

import msgspec
from nats.aio.client import Client

from .load import RunStats, closed_loop, medians
from .options import Sizes
from .procs import cpu_seconds, memory_kb
from .services import ECHO_CT_SUBJECT, ECHO_SUBJECT, HEADERS, LOAD, PREFIX, call


async def rss_phase(nc: Client, pid: int, sizes: Sizes) -> dict[str, Any]:
    ready = memory_kb(pid)
    await call(nc, "load", LOAD)  # the one cold load; every load after it is a cache hit
    run = await closed_loop(
        nc,
        f"{PREFIX}.load",
        msgspec.json.encode(LOAD),
        headers=HEADERS,
        in_flight=sizes.rss_in_flight,
        max_requests=sizes.rss_requests,
        duration_s=600.0,
    )
    after = memory_kb(pid)
    return {
        "pid": pid,
        "ready_kb": ready,
        "requests": run.completed,
        "errors": run.errors,
        "after_requests_kb": after,
        "after_requests_mb": round(after.get("VmRSS", 0) / 1024, 1),
    }


async def cached_phase(nc: Client, sizes: Sizes, pids: dict[str, int]) -> dict[str, Any]:
    """Echo and service at each level; beside the client's figures, the CPU time each process used per request
    (from /proc), which tells a responder that is the bottleneck from a client or a machine that is."""
    payload = msgspec.json.encode(LOAD)
    # echo_ct: the echo responder whose replies carry the Content-Type header the contract requires of the
    # service's; a diagnostic (the targets are judged against the bare echo).
    subjects = {"echo": ECHO_SUBJECT, "echo_ct": ECHO_CT_SUBJECT, "service": f"{PREFIX}.load"}
    runs: dict[str, dict[int, list[RunStats]]] = {t: {n: [] for n in sizes.levels} for t in subjects}
    cpu: dict[str, dict[int, list[dict[str, float]]]] = {t: {n: [] for n in sizes.levels} for t in subjects}

    async def one(target: str, in_flight: int, max_requests: int, seconds: float) -> RunStats:
        return await closed_loop(
            nc,
            subjects[target],
            payload,
            headers=HEADERS,
            in_flight=in_flight,
            max_requests=max_requests,
            duration_s=seconds,
        )

    for target in subjects:  # warm-up, not counted
        await one(target, 16, sizes.warmup_requests, sizes.run_seconds)
    for rep in range(sizes.repetitions):
        order = list(subjects) if rep % 2 == 0 else list(reversed(subjects))
        for level in sizes.levels:
            for target in order:
                watched = {"responder": pids[target], "client": pids["client"], "nats_server": pids["nats_server"]}
                before = {k: cpu_seconds(p) for k, p in watched.items()}
                stats = await one(target, level, sizes.run_max_requests, sizes.run_seconds)
                used = {k: cpu_seconds(p) - before[k] for k, p in watched.items()}
                runs[target][level].append(stats)
                cpu[target][level].append(
                    {
                        **{
                            f"{k}_cpu_us_per_request": round(v * 1e6 / max(1, stats.completed), 1)
                            for k, v in used.items()
                        },
                        **{f"{k}_cpu_share": round(v / stats.elapsed_s, 2) for k, v in used.items()},
                    }
                )
    levels = []
    for level in sizes.levels:
        entry: dict[str, Any] = {"in_flight": level}
        for target in subjects:
            samples = cpu[target][level]
            entry[target] = {
                **medians(runs[target][level]),
                **{k: round(statistics.median(c[k] for c in samples), 2) for k in samples[0]},
                "runs": [{**r.as_dict(), **c} for r, c in zip(runs[target][level], samples, strict=True)],
            }
        echo_rps = entry["echo"]["rps"]
        entry["ratio"] = round(entry["service"]["rps"] / echo_rps, 3) if echo_rps else 0.0
        echo_ct_rps = entry["echo_ct"]["rps"]
        entry["ratio_to_echo_ct"] = round(entry["service"]["rps"] / echo_ct_rps, 3) if echo_ct_rps else 0.0
        levels.append(entry)
    return {"request": LOAD, "payload_bytes": len(payload), "levels": levels}
