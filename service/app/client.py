"""A small client for the service, used by the `extension-loader` command line and the tests.

Every call sends a request and returns the reply's `data`, or raises `RemoteError` with the contract's
error code, message and details. `request` takes any request subject of the subjects table
(`contract/subjects.py`) by its suffix, the other methods are shorthands for the contract's; `gather` asks
every instance at once (a subject's fleet twin, `<prefix>.all.<suffix>`) and returns what each answered.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client

from ..contract.headers import CONTENT_TYPE, JSON, REQUESTER


class RemoteError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class Gathered:
    """The replies to one fleet request: each instance's `{"instance_id", "data"}` (sorted by instance id), and
    the error replies, which do not say which instance sent them."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RemoteError] = field(default_factory=list)


class LoaderClient:
    def __init__(
        self, nc: Client, *, prefix: str = "extensions", timeout: float = 40.0, requester: str | None = None
    ) -> None:
        self.nc = nc
        self.prefix = prefix
        self.timeout = timeout
        # Who the service's audit lines name: the caller's choice, else this connection's name and host.
        self.requester = requester or f"{nc.options.get('name') or 'client'}@{socket.gethostname()}"

    async def request(self, suffix: str, body: dict[str, Any] | None = None) -> Any:
        reply = await self.nc.request(
            f"{self.prefix}.{suffix}", _payload(body), timeout=self.timeout, headers=self._headers()
        )
        envelope = msgspec.json.decode(reply.data)
        if envelope.get("success"):
            return envelope.get("data")
        raise _remote_error(envelope)

    async def gather(self, suffix: str, body: dict[str, Any] | None = None, *, replies: int = 0) -> Gathered:
        """Asks every instance: one request on `<prefix>.all.<suffix>`, its replies collected on one inbox until
        the client's time-out has passed, or until `replies` have come when it is more than 0.

        NATS cannot say how many instances will answer, so without `replies` this always waits out the time-out
        (as `nats request --replies 0` does). Raises NoRespondersError when no instance serves the subject, and
        nats' TimeoutError when none answered in time."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        gathered = Gathered()
        try:
            await self.nc.publish(f"{self.prefix}.all.{suffix}", _payload(body), reply=inbox, headers=self._headers())
            with anyio.move_on_after(self.timeout):
                async for msg in sub.messages:
                    if msg.headers and msg.headers.get("Status") == "503":
                        raise nats.errors.NoRespondersError
                    envelope = msgspec.json.decode(msg.data)
                    if envelope.get("success"):
                        gathered.answers.append(envelope["data"])
                    else:
                        gathered.errors.append(_remote_error(envelope))
                    if replies and len(gathered.answers) + len(gathered.errors) >= replies:
                        break
        finally:
            await sub.unsubscribe()
        if not (gathered.answers or gathered.errors):
            raise nats.errors.TimeoutError
        gathered.answers.sort(key=lambda answer: str(answer.get("instance_id")))
        return gathered

    def _headers(self) -> dict[str, str]:
        return {CONTENT_TYPE: JSON, REQUESTER: self.requester}

    async def load(
        self, extension_type: str, name: str, version: str | None = None, *, with_dependencies: bool = False
    ) -> Any:
        body: dict[str, Any] = {"extension_type": extension_type, "name": name, "version": version}
        if with_dependencies:
            body["with_dependencies"] = True
        return await self.request("load", body)

    async def reload(self, extension_type: str, name: str, version: str | None = None) -> Any:
        return await self.request("reload", {"extension_type": extension_type, "name": name, "version": version})

    async def list(self, extension_type: str | None = None) -> Any:
        return await self.request("list", {"extension_type": extension_type})

    async def status(self, extension_type: str, name: str, version: str | None = None) -> Any:
        return await self.request("status", {"extension_type": extension_type, "name": name, "version": version})

    async def discover(self, extension_type: str | None = None, name: str | None = None) -> Any:
        return await self.request("discover", {"extension_type": extension_type, "name": name})

    async def stats(self) -> Any:
        return await self.request("stats")

    async def clear(self) -> Any:
        return await self.request("cache.clear")

    async def graph(self, extension_type: str, name: str, version: str | None = None, format: str = "json") -> Any:
        return await self.request(
            "graph", {"extension_type": extension_type, "name": name, "version": version, "format": format}
        )


def _payload(body: dict[str, Any] | None) -> bytes:
    return msgspec.json.encode({k: v for k, v in (body or {}).items() if v is not None})


def _remote_error(envelope: dict[str, Any]) -> RemoteError:
    error = envelope.get("error") or {}
    return RemoteError(str(error.get("code")), str(error.get("message")), dict(error.get("details") or {}))
