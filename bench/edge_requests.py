"""The steady requests of the edge soak: a client at the site loading registry versions, cached and cold, through
the site's loaders, and the tally of what came back.

A few workers share one connection (the site's `orchestrator`); each sends one request at a time at a set pace.
Each request is one of: a load of a version published during the soak (mostly cached, since the loaders load
each new latest ahead of any request; a version not at the site yet gets a contract error), a load of the latest
of one of those extensions, a load of a version published before the loaders started (cold the first time each
loader gets it), or a reload (cold). Every reply is counted as answered or as a contract error by its code; a
request with no reply within `timeout_s` (longer than any bound the service sets itself) is lost, as is one that
finds no responders. What each answer served (name, version, digest) is kept, to be compared at the end with
what the publisher signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from .edge_registry import KIND
from .services import HEADERS

TIMEOUT_S = 45.0  # above every bound of the service's own (a Nushell run, a fetch: 30 s each)
MIX = (("load", 0.45), ("latest", 0.10), ("cold", 0.25), ("reload", 0.20))


class Requester:
    """Sends requests to the site until told to stop; `live()` gives the (name, version) published so far during
    the soak, `base` those published before the loaders started."""

    def __init__(
        self,
        nc: Client,
        live: Callable[[], Sequence[tuple[str, str]]],
        base: Sequence[tuple[str, str]],
        rng: random.Random,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.nc = nc
        self.live = live
        self.base = list(base)
        self.rng = rng
        self.timeout_s = timeout_s
        self.sent: Counter[str] = Counter()  # by kind of request
        self.answered: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # contract errors, by code
        self.lost: Counter[str] = Counter()  # by why: timeout, no_responders, another transport error
        self.lost_requests: list[dict[str, Any]] = []  # what each lost one asked, and when
        self.served: set[tuple[str, str, str]] = set()  # (name, version, digest) of every answer
        self.latency_ns: list[int] = []
        self.began = time.monotonic()

    async def run(self, stop: asyncio.Event, rate: float, workers: int) -> None:
        """`workers` loops, together about `rate` requests a second, until `stop` is set; each finishes the
        request it is waiting on."""
        interval = workers / rate
        await asyncio.gather(*(self._worker(stop, interval, i * interval / workers) for i in range(workers)))

    async def _worker(self, stop: asyncio.Event, interval: float, offset: float) -> None:
        await asyncio.sleep(offset)  # the workers' requests spread over the interval: a pace, not a wait
        while not stop.is_set():
            began = time.monotonic()
            await self.one(*self._pick())
            rest = interval - (time.monotonic() - began)
            if rest > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rest)  # the pace, cut short when told to stop

    def _pick(self) -> tuple[str, str, str, str | None]:
        """(kind, subject suffix, name, version or None)."""
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        live = self.live()
        if kind == "cold" or not live:
            name, version = self.rng.choice(self.base)
            return "cold", "load", name, version
        name, version = self.rng.choice(live)
        if kind == "latest":
            return kind, "load", name, None
        if kind == "reload":
            name, version = self.rng.choice([*live, *self.base])
            return kind, "reload", name, version
        return kind, "load", name, version

    async def one(self, kind: str, suffix: str, name: str, version: str | None) -> dict[str, Any] | None:
        """One request, counted; the reply's data when it succeeded, else None."""
        body: dict[str, Any] = {"extension_type": KIND, "name": name}
        if version is not None:
            body["version"] = version
        self.sent[kind] += 1
        began = time.perf_counter_ns()
        try:
            reply = await self.nc.request(
                f"extensions.{suffix}", msgspec.json.encode(body), timeout=self.timeout_s, headers=HEADERS
            )
        except (TimeoutError, nats.errors.TimeoutError):
            self._lose("timeout", kind, body, began)
            return None
        except nats.errors.NoRespondersError:
            self._lose("no_responders", kind, body, began)
            return None
        except (nats.errors.Error, OSError) as exc:
            self._lose(type(exc).__name__, kind, body, began)
            return None
        self.latency_ns.append(time.perf_counter_ns() - began)
        envelope = msgspec.json.decode(reply.data)
        if envelope.get("success"):
            self.answered[kind] += 1
            data = envelope.get("data") or {}
            metadata = data.get("metadata") or {}
            self.served.add((str(metadata.get("name")), str(metadata.get("version")), str(data.get("digest"))))
            return dict(data)
        self.errors[str((envelope.get("error") or {}).get("code", "no code"))] += 1
        return None

    def _lose(self, why: str, kind: str, body: dict[str, Any], began_ns: int) -> None:
        self.lost[why] += 1
        at = round(time.monotonic() - self.began - (time.perf_counter_ns() - began_ns) / 1e9, 3)
        self.lost_requests.append({"why": why, "kind": kind, "request": body, "sent_at_s": at})

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.latency_ns)

        def at(q: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6, 1) if latencies else 0.0

        return {
            "sent": sum(self.sent.values()),
            "sent_by_kind": dict(self.sent),
            "answered": sum(self.answered.values()),
            "answered_by_kind": dict(self.answered),
            "contract_errors": sum(self.errors.values()),
            "contract_errors_by_code": dict(self.errors),
            "lost": sum(self.lost.values()),
            "lost_by_why": dict(self.lost),
            "lost_requests": self.lost_requests[:50],
            "reply_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)},
        }
