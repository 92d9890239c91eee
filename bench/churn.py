"""The other client of the contention phase: discovers and cold reloads, until told to stop.

    python -m bench.churn NATS_URL PREFIX NAME [NAME ...] [--discover-every SECONDS]

One loop sends `PREFIX.discover` (an empty body: every type) every SECONDS (back to back when one takes longer,
or with 0), another `PREFIX.reload` of each taskserv NAME in turn, back to back: a cold load each, one at a
time. It publishes `bench.churn.ready` once it listens on `bench.churn.stop`; a request there ends both loops
(each finishes the request it is waiting on) and is answered with the counts as JSON. Replies are checked by
their first bytes only: decoding a 500 KB discover here would be this process's work, not the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

import nats
import nats.errors
from nats.aio.msg import Msg

from service.contract.config import NO_AUTH_USER, inbox_prefix_for

READY = "bench.churn.ready"
STOP = "bench.churn.stop"
HEADERS = {"Content-Type": "application/json"}
OK = b'{"success":true'


async def churn(url: str, prefix: str, names: list[str], discover_every: float) -> None:
    nc = await nats.connect(
        url,
        name="bench-churn",
        max_reconnect_attempts=0,
        allow_reconnect=False,
        inbox_prefix=inbox_prefix_for(NO_AUTH_USER),  # a requester's, as nats.conf would want it
    )
    stopping = asyncio.Event()
    counts = {"discovers": 0, "reloads": 0, "errors": 0}
    took: dict[str, list[float]] = {"discover": [], "reload": []}

    async def loop(kind: str, bodies: list[bytes], every: float) -> None:
        i = 0
        while not stopping.is_set():
            began = time.perf_counter()
            try:
                reply = await nc.request(f"{prefix}.{kind}", bodies[i % len(bodies)], timeout=60, headers=HEADERS)
            except (TimeoutError, nats.errors.Error):
                counts["errors"] += 1
                continue
            took[kind].append(time.perf_counter() - began)
            counts[f"{kind}s"] += 1
            if not reply.data.startswith(OK):
                counts["errors"] += 1
            i += 1
            rest = every - (time.perf_counter() - began)
            if rest > 0:  # the pace of an open loop; a stop ends the pause at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), rest)

    stop_msg: list[Msg] = []

    async def on_stop(msg: Msg) -> None:
        stop_msg.append(msg)
        stopping.set()

    await nc.subscribe(STOP, cb=on_stop)
    await nc.flush()
    await nc.publish(READY, b"")
    reloads = [json.dumps({"extension_type": "taskserv", "name": n}).encode() for n in names]
    await asyncio.gather(loop("discover", [b"{}"], discover_every), loop("reload", reloads, 0.0))
    result: dict[str, float] = dict(counts)
    for kind, values in took.items():
        values.sort()
        result[f"{kind}_p50_ms"] = round(values[len(values) // 2] * 1000, 3) if values else 0.0
    await nc.publish(stop_msg[0].reply, json.dumps(result).encode())
    await nc.drain()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("url")
    p.add_argument("prefix")
    p.add_argument("names", nargs="+", help="taskservs to reload in turn")
    p.add_argument("--discover-every", type=float, default=0.0, help="seconds between discovers (0: back to back)")
    args = p.parse_args(argv)
    asyncio.run(churn(args.url, args.prefix, args.names, args.discover_every))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
