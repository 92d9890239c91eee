"""The NATS Services API (micro v1): `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` replies, and endpoint stats.

These replies are what `nats micro ls|info|stats` read; their shapes are the schemas in nats-io/jsm.go
(`schemas/micro/v1/`). Error replies are counted in `num_errors`, with the last one in `last_error`.

Why not nats-py's own `nats.micro`: with nats-py 2.16.0 its per-message wrapper (a `Request` object per
message, two clock reads, a division, one more coroutine) cost ~0.65 us of CPU against the ~0.30 us of the
counting here, 2-3% of the service's CPU for a cached `extensions.load` (21.5 against 20.6 us at 16 in flight,
13.5 against 13.3 us at 128), and the median service/echo ratio of `make bench`'s cached phase (10 alternated
runs of each) fell from 0.934 to 0.883 at 16 in flight and from 0.801 to 0.756 at 128: 5.5%, past the 5% it
may cost, though within this machine's run-to-run noise (ratios 0.55-1.14). What decides it is the contract:
nats.micro 2.16 puts every endpoint in a queue group (the fleet subjects `<prefix>.all.*` must be in none, or
one instance answers for all), draws its own instance id, counts as an error only an exception its handler
raises (and answers it with the exception's repr), times only the callback (a cold load run in a task would
count microseconds), answers `$SRV` with the request's own headers (no `Content-Type`, or a wrong one), sends
`"data": null`, which the micro v1 STATS schema refuses, and unsubscribes on stop instead of draining. Keeping
the contract on top of it took seventeen of its unpublished names, three of them method overrides, to replace a
hundred lines that use none.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..contract.headers import CONTENT_TYPE, JSON
from .replies import refused_reply

log = logging.getLogger(__name__)

SERVICE_NAME = "extension-loader"
DESCRIPTION = "Loads infrastructure extensions (providers, taskservs, clusters) through Nushell and caches them"
VERBS = ("PING", "INFO", "STATS")


@dataclass(slots=True)
class EndpointStats:
    name: str
    subject: str
    queue_group: str
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0  # nanoseconds

    def record(self, elapsed_ns: int, error: str | None) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    def stats(self) -> dict[str, Any]:
        average = self.processing_time // self.num_requests if self.num_requests else 0
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": self.queue_group,
            "num_requests": self.num_requests,
            "num_errors": self.num_errors,
            "last_error": self.last_error,
            "processing_time": self.processing_time,
            "average_processing_time": average,
        }

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "queue_group": self.queue_group, "metadata": None}


@dataclass(slots=True)
class ServiceIdentity:
    id: str
    version: str
    started: datetime
    metadata: dict[str, str]

    def subjects(self) -> list[tuple[str, str]]:
        """(verb, subject) for every `$SRV` subject this instance answers."""
        return [
            (verb, subject)
            for verb in VERBS
            for subject in (
                f"$SRV.{verb}",
                f"$SRV.{verb}.{SERVICE_NAME}",
                f"$SRV.{verb}.{SERVICE_NAME}.{self.id}",
            )
        ]

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": SERVICE_NAME,
            "id": self.id,
            "version": self.version,
            "metadata": self.metadata,
        }

    def reply(self, verb: str, endpoints: list[EndpointStats]) -> dict[str, Any]:
        if verb == "PING":
            return self._base("ping")
        if verb == "INFO":
            return {
                **self._base("info"),
                "description": DESCRIPTION,
                "endpoints": [e.info() for e in endpoints],
            }
        started = self.started.isoformat().replace("+00:00", "Z")
        return {**self._base("stats"), "started": started, "endpoints": [e.stats() for e in endpoints]}


def responder(
    nc: Client,
    identity: ServiceIdentity,
    verb: str,
    endpoints: Callable[[], list[EndpointStats]],
    reply_prefixes: tuple[str, ...],
) -> Callable[[Msg], Awaitable[None]]:
    """The subscription callback that answers one `$SRV` verb for this instance, into an inbox only."""

    async def answer(msg: Msg) -> None:
        if not msg.reply:
            return
        why = refused_reply(msg.reply, reply_prefixes)
        if why is not None:
            log.warning("refused $SRV.%s: %s", verb, why)
            return
        reply = identity.reply(verb, endpoints())
        try:
            await nc.publish(msg.reply, msgspec.json.encode(reply), headers={CONTENT_TYPE: JSON})
        except Exception as exc:
            log.error("could not answer $SRV.%s: %s", verb, exc)

    return answer
