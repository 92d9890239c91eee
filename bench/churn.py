"""The other client of the contention phase: discovers and cold reloads, each back to back, until told to stop.

    python -m bench.churn NATS_URL PREFIX NAME [NAME ...]

One loop sends `PREFIX.discover` (an empty body: every type), another `PREFIX.reload` of each taskserv NAME in
turn. It publishes `bench.churn.ready` once it listens on `bench.churn.stop`; a request there ends both loops
(each finishes the request it is waiting on) and is answered with the counts as JSON. Replies are checked by
their first bytes only: decoding a 500 KB discover here would be this process's work, not the service's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import nats
import nats.errors
from nats.aio.msg import Msg

READY = "bench.churn.ready"
STOP = "bench.churn.stop"
HEADERS = {"Content-Type": "application/json"}
OK = b'{"success":true'


async def churn(url: str, prefix: str, names: list[str]) -> None:
    nc = await nats.connect(url, name="bench-churn", max_reconnect_attempts=0, allow_reconnect=False)
    stopping = asyncio.Event()
    counts = {"discovers": 0, "reloads": 0, "errors": 0}
    took: dict[str, list[float]] = {"discover": [], "reload": []}

    async def loop(kind: str, bodies: list[bytes]) -> None:
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

    stop_msg: list[Msg] = []

    async def on_stop(msg: Msg) -> None:
        stop_msg.append(msg)
        stopping.set()

    await nc.subscribe(STOP, cb=on_stop)
    await nc.flush()
    await nc.publish(READY, b"")
    reloads = [json.dumps({"extension_type": "taskserv", "name": n}).encode() for n in names]
    await asyncio.gather(loop("discover", [b"{}"]), loop("reload", reloads))
    result: dict[str, float] = dict(counts)
    for kind, values in took.items():
        values.sort()
        result[f"{kind}_p50_ms"] = round(values[len(values) // 2] * 1000, 3) if values else 0.0
    await nc.publish(stop_msg[0].reply, json.dumps(result).encode())
    await nc.drain()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m bench.churn NATS_URL PREFIX NAME [NAME ...]", file=sys.stderr)
        return 2
    asyncio.run(churn(argv[0], argv[1], argv[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
