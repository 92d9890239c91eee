"""The floor: a bare nats-py responder that answers every request with the request's own payload.

    python -m bench.echo NATS_URL SUBJECT [--content-type]

It subscribes SUBJECT in the queue group `bench-echo`, and SUBJECT.ping for readiness, and runs until
SIGTERM or SIGINT. No decoding, no headers, no tracing: what Python and NATS cost on their own.

With `--content-type` each reply carries the one header the contract requires of every reply
(`Content-Type: application/json`): what that header alone costs, a diagnostic beside the floor.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
from nats.aio.msg import Msg


async def serve(url: str, subject: str, headers: dict[str, str] | None = None) -> None:
    nc = await nats.connect(url, name="bench-echo", max_reconnect_attempts=0, allow_reconnect=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def echo(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data, headers=headers)

    async def ping(msg: Msg) -> None:
        await nc.publish(msg.reply, b"pong")

    await nc.subscribe(subject, queue="bench-echo", cb=echo)
    await nc.subscribe(f"{subject}.ping", cb=ping)
    await nc.flush()
    await nc.flush()  # see service.wire.service.flush_subscriptions: the second PING travels behind the SUBs
    await stop.wait()
    await nc.drain()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["--content-type"]):
        print("usage: python -m bench.echo NATS_URL SUBJECT [--content-type]", file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], argv[1], {"Content-Type": "application/json"} if argv[2:] else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
