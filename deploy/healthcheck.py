"""The container's health check: exit 0 when the extension loader answers `$SRV.PING.extension-loader` over NATS.

    python /app/deploy/healthcheck.py [CONFIG_FILE]      (default: /app/deploy/loader.toml)

It reads the configuration exactly as `extension-loader serve --config CONFIG_FILE` does (packaged defaults,
the file, then the EXTENSION_LOADER__* environment variables), so it asks the NATS server with the credentials
and the inbox prefix (`nats.inbox_prefix`, where the reply arrives) that the service itself uses, wherever they
were set. Exit status 1 (Docker's "unhealthy") otherwise, with the reason on standard error, which
`docker inspect` shows.

It pings through the NATS Services API rather than sending a request such as `extensions.stats`: nats.conf's
`loader` user (the service's own) may not send requests to the service, only this ping (README.md, Security).

With several replicas in one queue group any of them may answer: a pass means "the service answers on this
NATS server" (and this container's own process is alive, or the container would have stopped).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import nats

from service.contract.config import NatsConfig, load_config
from service.wire.micro import SERVICE_NAME

DEFAULT_CONFIG = "/app/deploy/loader.toml"
TIMEOUT_S = 5.0  # each of: connecting, waiting for the reply
DEADLINE_S = 8.0  # the whole check; below the 10 s time-out that the Dockerfile and docker-compose.yml give it
PING_RESPONSE = "io.nats.micro.v1.ping_response"


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """The service's NATS options (service/wire/connection.py), inbox prefix included, with a bounded number of
    tries.

    `max_reconnect_attempts=0` would mean "no limit" in nats-py's server selection (it retries a refused
    connection forever), so each server gets at most two tries.
    """
    return {
        **cfg.credentials(),
        "name": f"{cfg.name}-healthcheck",
        "connect_timeout": TIMEOUT_S,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.5,
    }


async def check(config_file: str) -> dict[str, Any]:
    config = load_config(config_file, environ=os.environ)

    async def quiet(_: Exception) -> None:  # the failure is reported once, by main()
        pass

    with anyio.fail_after(DEADLINE_S):
        nc = await nats.connect(**connect_options(config.nats), error_cb=quiet)
        try:
            msg = await nc.request(f"$SRV.PING.{SERVICE_NAME}", b"", timeout=TIMEOUT_S)
        finally:
            await nc.close()
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if reply.get("type") != PING_RESPONSE or reply.get("name") != SERVICE_NAME:
        raise ValueError(f"not a ping reply of {SERVICE_NAME}: {msg.data[:200]!r}")
    return reply


def main(argv: Sequence[str]) -> int:
    # nats-py turns its connection into TLS under asyncio's stream protocol, which then logs "returning true from
    # eof_received() has no effect when using ssl" when it closes: not a reason, and the check prints one line.
    logging.getLogger("asyncio").addFilter(lambda record: "eof_received()" not in record.getMessage())
    config_file = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    try:
        reply = anyio.run(check, config_file)
    except TimeoutError:
        print(
            f"unhealthy: timed out connecting to NATS or waiting for the reply (limit {DEADLINE_S:g} s)",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # any failure at all is "unhealthy", never a crash with another status
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: instance {reply.get('id', '?')} answered")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
