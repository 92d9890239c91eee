"""Fixtures for the registry on JetStream: clients that reconnect to the JetStream server of `js_server`
(tests/conftest.py, which can be stopped and started again on the same port and store) and let a test wait on
their disconnects and reconnects.

Nothing is mocked; every wait is on an event, bounded by WAIT.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from nats.aio.client import Client

from service.notify import Notifier
from tests.conftest import WAIT, JetStreamServer


class Watched:
    """A client that reconnects for ever, and counts its disconnects and reconnects."""

    def __init__(self) -> None:
        self.nc = Client()
        self.disconnects = 0
        self.reconnects = 0
        self._changed = Notifier()

    async def _disconnected(self) -> None:
        self.disconnects += 1
        self._changed.notify()

    async def _reconnected(self) -> None:
        self.reconnects += 1
        self._changed.notify()

    async def _error(self, exc: Exception) -> None:
        pass  # refused permissions and lost connections are what some tests are about

    async def connect(self, url: str, *, user: str | None = None, password: str | None = None) -> Client:
        await self.nc.connect(
            url,
            name="registry-test",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            user=user,
            password=password,
        )
        return self.nc

    async def close(self) -> None:
        # nats-py's close flushes the socket first, which raises when the server was killed under it.
        with contextlib.suppress(ConnectionError):
            await self.nc.close()

    async def wait_disconnected(self, count: int = 1) -> None:
        with anyio.fail_after(WAIT):
            await self._changed.wait_until(lambda: self.disconnects >= count)

    async def wait_reconnected(self, count: int = 1) -> None:
        with anyio.fail_after(WAIT):
            await self._changed.wait_until(lambda: self.reconnects >= count)


Connect = Callable[..., Awaitable[Watched]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """`await connect(url, user=..., password=...)`: a Watched client, closed when the test ends."""
    async with AsyncExitStack() as stack:

        async def make(url: str, *, user: str | None = None, password: str | None = None) -> Watched:
            watched = Watched()
            await watched.connect(url, user=user, password=password)
            stack.push_async_callback(watched.close)
            return watched

        yield make


@pytest.fixture
async def js_nc(js_server: JetStreamServer, connect: Connect) -> Client:
    return (await connect(js_server.url)).nc
