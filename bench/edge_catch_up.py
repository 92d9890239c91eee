"""edge_catch_up: how long the site's mirrors take to catch up once the leaf link is back, after a cut during which
the hub took `publishes` new versions.

Each round: the link cut (every relay closed), the versions published at the hub (prepared beforehand), the cut
held until `hold_s` after it began, then mended. Measured from the mend: the site's leaf link up again, the index
mirror and the archive mirror each at the hub's last sequence (a mirror keeps its origin's sequences; each side's
admin asks each stream), and the site loader's announcement of the last version. The mirrors do not retry at once:
a mirror that lost its source retries with a back-off of its own that grows with its failed attempts during the
outage (nats-server: 5 s times twice the failures, up to two minutes, and a 10 s stall check), so the catch-up
depends on how long the link was down, which is why each round holds it for a set time. Rounds run one after the
other, each once the last has caught up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client

from service.app.publishing import Prepared

from .edge_registry import Publisher
from .edge_site import ARCHIVES, INDEX, Edge
from .edge_watch import Announcements
from .options import BenchError

CATCH_UP_WITHIN_S = 180.0
POLL_S = 0.05


async def measure(
    edge: Edge,
    publisher: Publisher,
    hub_admin: Client,
    site_admin: Client,
    heard: Announcements,
    rounds: Sequence[tuple[float, Sequence[Prepared]]],
) -> dict[str, Any]:
    """One round per (hold_s, versions)."""
    out: list[dict[str, Any]] = []
    for hold_s, versions in rounds:
        out.append(await _round(edge, publisher, hub_admin, site_admin, heard, hold_s, versions))
    return {"rounds": out, "publishes": len(rounds[0][1]) if rounds else 0}


async def _round(
    edge: Edge,
    publisher: Publisher,
    hub_admin: Client,
    site_admin: Client,
    heard: Announcements,
    hold_s: float,
    versions: Sequence[Prepared],
) -> dict[str, Any]:
    cut_at = time.monotonic()
    edge.cut()
    await asyncio.to_thread(edge.wait_linked, False)
    published_at = time.monotonic()
    for prepared in versions:
        await publisher.publish(prepared, CATCH_UP_WITHIN_S)
    publishing_s = time.monotonic() - published_at
    await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - cut_at)))  # the outage lasts `hold_s`
    held_s = time.monotonic() - cut_at
    hub_js, site_js = hub_admin.jetstream(), site_admin.jetstream()
    wanted = {stream: (await hub_js.stream_info(stream)).state.last_seq for stream in (INDEX, ARCHIVES)}
    mended = time.monotonic()
    edge.mend()
    relinked_s = await asyncio.to_thread(edge.wait_linked, True)
    caught: dict[str, float] = {}
    while len(caught) < len(wanted):
        for stream, sequence in wanted.items():
            if stream not in caught and (await site_js.stream_info(stream)).state.last_seq >= sequence:
                caught[stream] = time.monotonic() - mended
        if time.monotonic() - mended > CATCH_UP_WITHIN_S:
            raise BenchError(f"the site's mirrors did not catch up within {CATCH_UP_WITHIN_S} s of the mend: {caught}")
        await asyncio.sleep(POLL_S)  # a poll interval between looks at the mirrors
    last = (versions[-1].name, versions[-1].release.version)

    def announced() -> list[float]:
        return [a.at for a in heard.heard if a.reason == "published" and (a.name, a.version) == last]

    await heard.wait_for(lambda _: bool(announced()), CATCH_UP_WITHIN_S, f"the announcement of {last}")
    return {
        "publishes": len(versions),
        "held_s": round(held_s, 2),
        "publishing_s": round(publishing_s, 2),
        "relinked_s": round(relinked_s, 2),
        "index_caught_up_s": round(caught[INDEX], 2),
        "archives_caught_up_s": round(caught[ARCHIVES], 2),
        "last_announced_s": round(announced()[0] - mended, 2),
    }
