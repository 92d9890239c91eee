"""The load generator: N workers in a closed loop on one nats-py connection, and the statistics of a run."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client

ERROR_HEADER = "Nats-Service-Error"


@dataclass(frozen=True, slots=True)
class RunStats:
    """One closed-loop run at one level of requests in flight; latencies in microseconds."""

    in_flight: int
    completed: int
    errors: int
    elapsed_s: float
    rps: float
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of values already sorted (q in 0..100); 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summary_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """n, min, p50, p90, max and mean of durations given in nanoseconds, in milliseconds."""
    values = sorted(s / 1e6 for s in samples_ns)
    if not values:
        return {"n": 0, "min_ms": 0.0, "p50_ms": 0.0, "p90_ms": 0.0, "max_ms": 0.0, "mean_ms": 0.0}
    return {
        "n": len(values),
        "min_ms": round(values[0], 3),
        "p50_ms": round(statistics.median(values), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "max_ms": round(values[-1], 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


async def closed_loop(
    nc: Client,
    subject: str,
    payload: bytes,
    *,
    in_flight: int,
    max_requests: int,
    duration_s: float,
    headers: Mapping[str, str] | None = None,
    reply_within_s: float = 10.0,
) -> RunStats:
    """`in_flight` workers each send the next request when the previous reply arrives, until `max_requests`
    were sent or `duration_s` passed. A time-out, a transport error or an error reply counts as an error."""
    latencies: list[int] = []
    errors = 0
    issued = 0
    hdrs = dict(headers) if headers else None
    perf_ns = time.perf_counter_ns
    deadline = perf_ns() + int(duration_s * 1e9)

    async def worker() -> None:
        nonlocal issued, errors
        while issued < max_requests and perf_ns() < deadline:
            issued += 1
            started = perf_ns()
            try:
                msg = await nc.request(subject, payload, timeout=reply_within_s, headers=hdrs)
            except (TimeoutError, nats.errors.Error):
                errors += 1
                continue
            latencies.append(perf_ns() - started)
            if msg.headers and ERROR_HEADER in msg.headers:
                errors += 1

    began = perf_ns()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed_s = (perf_ns() - began) / 1e9
    values = sorted(v / 1e3 for v in latencies)
    return RunStats(
        in_flight=in_flight,
        completed=len(values),
        errors=errors,
        elapsed_s=round(elapsed_s, 4),
        rps=round(len(values) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        p50_us=round(percentile(values, 50), 1),
        p99_us=round(percentile(values, 99), 1),
        mean_us=round(statistics.fmean(values), 1) if values else 0.0,
        max_us=round(values[-1], 1) if values else 0.0,
    )


def medians(runs: Sequence[RunStats]) -> dict[str, float]:
    """The medians over repetitions of rps, p50 and p99 (what the targets are judged on)."""
    return {
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_us": round(statistics.median(r.p50_us for r in runs), 1),
        "p99_us": round(statistics.median(r.p99_us for r in runs), 1),
        "errors": float(sum(r.errors for r in runs)),
    }
