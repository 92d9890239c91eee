"""The NATS Services API (micro v1): `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` replies, and endpoint stats.

These replies are what `nats micro ls|info|stats` read; their shapes are the schemas in nats-io/jsm.go
(`schemas/micro/v1/`). Error replies are counted in `num_errors`, with the last one in `last_error`.
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
