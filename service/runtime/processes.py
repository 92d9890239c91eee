"""Starting a child process without holding up the event loop.

asyncio starts a process right on the event loop: `fork`/`exec` and the wait until the child has become its
program. On a machine whose cores are busy (with the very Nushell runs being started, say) that wait is often
milliseconds and at times tens of them, and every cached answer due meanwhile waits with it (measured on two
cores, cold reloads back to back: a loop step over 3 ms at one start in two, 30 ms at worst). Here the process is
started by a thread of a small pool and then watched from the loop with a pidfd: its exit is a readable file
descriptor, so no thread waits for it either. The pool's threads run as much nicer than the service as the
process is to be, so the process is born at its priority, every thread of it. Where the running kernel gives no
pidfd (before Linux 5.3, or a seccomp profile that refuses it), anyio's own `open_process` is used, and the
priority is lowered right after the start.

What comes back is an anyio `Process`, as `anyio.open_process` gives: the sandbox does not tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

log = logging.getLogger(__name__)

# A start takes a thread only for its moment: a few at once are plenty.
_STARTERS_PER_PRIORITY = 4
_starters: dict[int, ThreadPoolExecutor] = {}
# A process forked from this one (mutation testing forks the test process) has none of their threads: its starts
# would wait for ever on a pool that thinks it has idle ones. It makes its own.
os.register_at_fork(after_in_child=_starters.clear)


@functools.cache
def pidfd_usable() -> bool:
    """Whether this kernel, as this process may use it, gives pidfds (asked once)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        log.info("no pidfd here (%s): processes are started and watched by asyncio", exc)
        return False
    return True


async def start_process(
    argv: Sequence[str], *, stdin: bool, cwd: Path, env: Mapping[str, str], nice: int = 0
) -> Process:
    """The command started with pipes on standard output and error (and input: `stdin`), in `cwd` with exactly
    `env`, in a session (and process group) of its own, `nice` steps nicer than the service (at most 19).
    Raises OSError when it cannot be started. A start is not cut short: cancelled meanwhile, it completes and
    the caller's next wait is cancelled, so the caller must own the process from the moment this returns."""
    with anyio.CancelScope(shield=True):
        return await _start(argv, stdin=stdin, cwd=cwd, env=env, nice=nice)
    raise AssertionError("a shielded start is not cancelled")  # (for the type checker: a scope may swallow)


async def _start(argv: Sequence[str], *, stdin: bool, cwd: Path, env: Mapping[str, str], nice: int) -> Process:
    # The same start either way: pipes on standard output and error, a session (and process group) of its own.
    options: dict[str, Any] = {
        "stdin": subprocess.PIPE if stdin else subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "cwd": cwd,
        "env": dict(env),
        "start_new_session": True,
    }
    if not pidfd_usable():
        process = await anyio.open_process(list(argv), **options)
        # Lowered once started (for its first thread: one `nu` starts meanwhile keeps the service's priority);
        # one that has already exited has nothing left to run.
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, process.pid, _niceness(os.getpriority(os.PRIO_PROCESS, 0), nice))
        return process

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), **options)

    started = await asyncio.get_running_loop().run_in_executor(_starter(nice), popen)
    try:
        return await _PidfdProcess.adopt(started)
    except BaseException:  # out of file descriptors, say: nobody else would ever reap it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(started.wait)
        raise


def _niceness(current: int, nice: int) -> int:
    return min(19, current + max(0, nice))


def _starter(nice: int) -> ThreadPoolExecutor:
    """The threads that start processes `nice` steps nicer than the service: on Linux a thread has a niceness of
    its own, and a process started from a thread is born with that thread's."""
    executor = _starters.get(nice)
    if executor is None:
        executor = ThreadPoolExecutor(
            max_workers=_STARTERS_PER_PRIORITY,
            thread_name_prefix=f"process-starter-nice-{nice}",
            initializer=_become_nicer,
            initargs=(nice,),
        )
        _starters[nice] = executor
    return executor


def _become_nicer(nice: int) -> None:
    """Makes the calling thread (0: the caller, on Linux a thread) `nice` steps nicer. Only ever nicer: a thread
    may always lower its own priority, never raise it back without privileges, so these threads start nothing
    else."""
    if nice > 0:
        os.setpriority(os.PRIO_PROCESS, 0, _niceness(os.getpriority(os.PRIO_PROCESS, 0), nice))


class _Reader(ByteReceiveStream):
    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport) -> None:
        self._reader = reader
        self._transport = transport
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        data = await self._reader.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        self._closed = True
        self._transport.close()
        await anyio.lowlevel.checkpoint()


class _Writer(ByteSendStream):
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
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
        self._pidfd = pidfd  # -1 once the exit is seen (or the watch given up)
        self._exited = anyio.Event()
        self._stdin: _Writer | None = None
        self._stdout: _Reader | None = None
        self._stderr: _Reader | None = None

    @classmethod
    async def adopt(cls, popen: subprocess.Popen[bytes]) -> _PidfdProcess:
        """Watches a process just started. On failure, everything made for it is closed, its pipes too; the
        process itself is the caller's to stop."""
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        self: _PidfdProcess | None = None
        try:
            # A process that has exited keeps its id (a zombie) until it is reaped, here: this is its pidfd.
            self = cls(popen, os.pidfd_open(popen.pid))
            loop.add_reader(self._pidfd, self._on_exit)
            if popen.stdout is not None:
                self._stdout = await _read_pipe(loop, popen.stdout, transports)
            if popen.stderr is not None:
                self._stderr = await _read_pipe(loop, popen.stderr, transports)
            if popen.stdin is not None:
                transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, popen.stdin)
                transports.append(transport)
                self._stdin = _Writer(asyncio.StreamWriter(transport, protocol, None, loop))
            return self
        except BaseException:
            if self is not None:
                self._unwatch(loop)
            for made in transports:
                made.close()
            for pipe in (popen.stdin, popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
            raise

    def _on_exit(self) -> None:
        if self._popen.poll() is None:  # woken for nothing: the process is still there
            return
        self._unwatch(asyncio.get_running_loop())
        self._exited.set()

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pidfd >= 0:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def wait(self) -> int:
        await self._exited.wait()
        returncode = self._popen.returncode
        assert returncode is not None
        return returncode

    async def aclose(self) -> None:
        """Closes the pipes (a process blocked on a full one gets SIGPIPE) and waits for the exit; cancelled
        while it waits, kills the process and still waits for it, as anyio's own does."""
        with anyio.CancelScope(shield=True) as scope:
            for stream in (self._stdin, self._stdout, self._stderr):
                if stream is not None:
                    await stream.aclose()
            scope.shield = False
            try:
                await self.wait()
            except BaseException:
                scope.shield = True
                self.kill()
                await self.wait()
                raise

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:  # once reaped, its id may be another process's
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


async def _read_pipe(loop: asyncio.AbstractEventLoop, pipe: IO[bytes], made: list[asyncio.BaseTransport]) -> _Reader:
    reader = asyncio.StreamReader(loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    made.append(transport)
    return _Reader(reader, transport)
