"""The faults the edge soak injects, one at a time, and the record of each.

- `link_cut`: every relay between the site and the hub closed for a while (the hub runs on and takes publishes,
  the site serves from its mirrors), then listening again; over once the site's leaf link is up again.
- `hub_node_kill`: one hub node (in turn) killed with SIGKILL, kept down a while, started again on its store;
  over once the hub's JetStream and both registry streams have a leader with every replica current.
- `loader_restart`: one site loader (in turn) stopped with SIGTERM, as a service manager stops it (it drains what
  it received), and started again on its data folder; over once it serves.

Each fault's hold is drawn from its range; the next fault starts `gap_s` after the last one is over. Every fault
is recorded with when it began, how long it held, how long recovery took, and on what.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .edge_loaders import SiteLoader
from .edge_site import Edge
from .procs import Child

KINDS = ("link_cut", "hub_node_kill", "loader_restart")


@dataclass(frozen=True)
class Holds:
    """How long each fault lasts (a range, drawn from), and the pause between faults."""

    link_cut_s: tuple[float, float] = (5.0, 25.0)
    hub_node_down_s: tuple[float, float] = (3.0, 15.0)
    gap_s: float = 10.0


class Faults:
    def __init__(self, edge: Edge, loaders: list[SiteLoader], children: list[Child], rng: random.Random) -> None:
        self.edge = edge
        self.loaders = loaders
        self.children = children
        self.rng = rng
        self.began = time.monotonic()
        self.done: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._turn: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event, holds: Holds, rounds: int | None = None) -> None:
        """Faults in turn (each kind once a round) until `stop` is set, or after `rounds` rounds."""
        done_rounds = 0
        while not stop.is_set() and (rounds is None or done_rounds < rounds):
            for kind in KINDS:
                if stop.is_set():
                    return
                await self.inject(kind, holds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), holds.gap_s)  # the pause between faults
            done_rounds += 1

    async def inject(self, kind: str, holds: Holds) -> dict[str, Any]:
        began = time.monotonic()
        record: dict[str, Any] = {"kind": kind, "at_s": round(began - self.began, 1)}
        if kind == "link_cut":
            record.update(await self._cut(self.rng.uniform(*holds.link_cut_s)))
        elif kind == "hub_node_kill":
            record.update(
                await self._kill(self._next(kind, len(self.edge.hub)), self.rng.uniform(*holds.hub_node_down_s))
            )
        elif kind == "loader_restart":
            record.update(await self._restart(self.loaders[self._next(kind, len(self.loaders))]))
        else:
            raise ValueError(f"no such fault: {kind}")
        record["took_s"] = round(time.monotonic() - began, 2)
        self.counts[kind] += 1
        self.done.append(record)
        return record

    def _next(self, kind: str, count: int) -> int:
        index = self._turn[kind] % count
        self._turn[kind] += 1
        return index

    async def _cut(self, hold_s: float) -> dict[str, Any]:
        self.edge.cut()
        await asyncio.to_thread(self.edge.wait_linked, False)
        await asyncio.sleep(hold_s)  # the outage itself
        self.edge.mend()
        relinked = await asyncio.to_thread(self.edge.wait_linked, True)
        return {"target": "every relay", "held_s": round(hold_s, 1), "relinked_s": round(relinked, 2)}

    async def _kill(self, index: int, hold_s: float) -> dict[str, Any]:
        node = self.edge.hub[index]
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(hold_s)  # the node stays down this long
        began = time.monotonic()
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(self.edge.wait_hub_settled)
        return {"target": node.name, "held_s": round(hold_s, 1), "settled_s": round(time.monotonic() - began, 2)}

    async def _restart(self, loader: SiteLoader) -> dict[str, Any]:
        old = loader.instance_id
        await loader.stop()
        stopped = time.monotonic()
        new = await loader.start(self.children)
        return {
            "target": loader.name,
            "stop_s": round(stopped - loader.stopped_at, 2),
            "ready_s": round(time.monotonic() - stopped, 2),
            "instances": [old, new],
        }
