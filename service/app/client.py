"""A small client for the service, used by the `extension-loader` command line and the tests.

Every call sends a request and returns the reply's `data`, or raises `RemoteError` with the contract's
error code, message and details.
"""

from __future__ import annotations

import socket
from typing import Any

import msgspec
from nats.aio.client import Client

from ..contract.headers import CONTENT_TYPE, JSON, REQUESTER


class RemoteError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


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
        payload = msgspec.json.encode({k: v for k, v in (body or {}).items() if v is not None})
        headers = {CONTENT_TYPE: JSON, REQUESTER: self.requester}
        reply = await self.nc.request(f"{self.prefix}.{suffix}", payload, timeout=self.timeout, headers=headers)
        envelope = msgspec.json.decode(reply.data)
        if envelope.get("success"):
            return envelope.get("data")
        error = envelope.get("error") or {}
        raise RemoteError(str(error.get("code")), str(error.get("message")), dict(error.get("details") or {}))

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

    async def graph(self, extension_type: str, name: str, version: str | None = None, fmt: str = "json") -> Any:
        return await self.request(
            "graph", {"extension_type": extension_type, "name": name, "version": version, "format": fmt}
        )
