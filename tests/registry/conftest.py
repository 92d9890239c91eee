"""Fixtures for the registry on JetStream: a nats-server that can be stopped and started again on the same port
and store, and clients that reconnect to it and let a test wait on their disconnects and reconnects.

Nothing is mocked; every wait is on an event, bounded by WAIT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client

from service.app.natsserver import NatsServer
from tests.conftest import WAIT


class JetStreamServer:
    """A JetStream nats-server on one loopback port and one store folder, across stops and starts."""

    def __init__(self, store: Path, extra: list[str] | None = None) -> None:
        self.store = store
        self.extra = extra or []
        self.port = -1  # a free one the first time, the same one after
        self._server: NatsServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> JetStreamServer:
        args = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store), *self.extra]
        self._server = NatsServer(args).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.resume()
            self._server.stop()
            self._server = None

    def kill(self) -> None:
        """Ends the server at once (SIGKILL), as a crash would; `stop` still reaps it."""
        self._process().kill()

    def pause(self) -> None:
        """Stops the process (SIGSTOP) and returns once it is stopped: its connections stay open and nothing
        answers on them."""
        process = self._process()
        process.send_signal(signal.SIGSTOP)
        os.waitpid(process.pid, os.WUNTRACED)  # the signal is only queued until then

    def resume(self) -> None:
        process = self._process()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)

    def _process(self) -> subprocess.Popen[bytes]:
        assert self._server is not None and self._server.process is not None, "the server is not running"
        return self._server.process


@pytest.fixture
def js_server(tmp_path: Path) -> Iterator[JetStreamServer]:
    server = JetStreamServer(tmp_path / "jetstream").start()
    try:
        yield server
    finally:
        server.stop()


class Watched:
    """A client that reconnects for ever, and counts its disconnects and reconnects."""

    def __init__(self) -> None:
        self.nc = Client()
        self.disconnects = 0
        self.reconnects = 0
        self._changed = anyio.Event()

    async def _disconnected(self) -> None:
        self.disconnects += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def _reconnected(self) -> None:
        self.reconnects += 1
        self._changed.set()
        self._changed = anyio.Event()

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
            while self.disconnects < count:
                await self._changed.wait()

    async def wait_reconnected(self, count: int = 1) -> None:
        with anyio.fail_after(WAIT):
            while self.reconnects < count:
                await self._changed.wait()


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
