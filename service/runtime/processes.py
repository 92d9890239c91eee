"""Starting a child process without holding up the event loop.

asyncio starts a process right on the event loop: `fork`/`exec` and the wait until the child has become its
program. On a machine whose cores are busy (with the very Nushell runs being started, say) that wait is often
milliseconds and at times tens of them, and every cached answer due meanwhile waits with it (measured on two
cores, cold reloads back to back: a loop step over 3 ms at one start in two, 30 ms at worst). Here the process is
started in a worker thread and then watched from the loop with a pidfd: its exit is a readable file
descriptor, so no thread waits for it either. Where the system has no pidfd (Linux before 5.3), anyio's own
`open_process` is used.

What comes back is an anyio `Process`, as `anyio.open_process` gives: the sandbox does not tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

# Starts take a worker thread only for the moment of the start: a few at once are plenty.
_STARTING = anyio.CapacityLimiter(4)


async def start_process(
    argv: Sequence[str], *, stdin: bool, cwd: Path, env: Mapping[str, str], new_session: bool = True
) -> Process:
    """The command started with pipes on standard output and error (and input: `stdin`), in `cwd` with exactly
    `env`, in a session of its own. Raises OSError when it cannot be started. Not to be cancelled half-way:
    callers shield it, or a started process would have no owner."""
    if not hasattr(os, "pidfd_open"):
        return await anyio.open_process(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=new_session,
        )

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=new_session,
        )

    process = await anyio.to_thread.run_sync(popen, limiter=_STARTING)
    try:
        return await _PidfdProcess.adopt(process)
    except BaseException:  # no pidfd to be had (out of file descriptors): nobody would ever reap it
        with contextlib.suppress(ProcessLookupError):
            if new_session:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.wait()  # killed a moment ago: not a wait that lasts
        raise


class _Reader(ByteReceiveStream):
    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport) -> None:
        self._reader = reader
        self.transport = transport

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._reader.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        self.transport.close()
        await anyio.lowlevel.checkpoint()


class _Writer(ByteSendStream):
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            self._writer.write(item)
            await self._writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:  # the process closed its end, or exited
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
        await anyio.lowlevel.checkpoint()


class _PidfdProcess(Process):
    """A `subprocess.Popen` watched from the event loop: pipes as stream transports, the exit by its pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self._exited = anyio.Event()
        self._stdin: _Writer | None = None
        self._stdout: _Reader | None = None
        self._stderr: _Reader | None = None

    @classmethod
    async def adopt(cls, popen: subprocess.Popen[bytes]) -> _PidfdProcess:
        """Watches a process just started. On failure its pipes are closed; the process is the caller's."""
        loop = asyncio.get_running_loop()
        try:
            # A process that has exited keeps its id (a zombie) until it is reaped, here: this is its pidfd.
            self = cls(popen, os.pidfd_open(popen.pid))
        except BaseException:
            for pipe in (popen.stdin, popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
            raise
        loop.add_reader(self._pidfd, self._on_exit)
        # Transports over fresh pipes of our own: set up at once, without a wait that could be cut short.
        if popen.stdout is not None:
            self._stdout = await _read_pipe(loop, popen.stdout)
        if popen.stderr is not None:
            self._stderr = await _read_pipe(loop, popen.stderr)
        if popen.stdin is not None:
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, popen.stdin)
            self._stdin = _Writer(asyncio.StreamWriter(transport, protocol, None, loop))
        return self

    def _on_exit(self) -> None:
        if self._popen.poll() is None:  # woken for nothing: the process is still there
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        returncode = self._popen.returncode
        assert returncode is not None
        return returncode

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for stream in (self._stdin, self._stdout, self._stderr):
                if stream is not None:
                    await stream.aclose()
            await self.wait()

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, sig)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    @property
    def stdin(self) -> ByteSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> ByteReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream | None:
        return self._stderr


async def _read_pipe(loop: asyncio.AbstractEventLoop, pipe: IO[bytes]) -> _Reader:
    reader = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return _Reader(reader, transport)
