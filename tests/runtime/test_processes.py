"""Starting processes off the event loop, with the real `nu`: what the sandbox relies on, on every path."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from service.runtime import processes
from service.runtime.processes import pidfd_usable, start_process
from service.runtime.sandbox import base_env
from tests.conftest import NU, WAIT, thread_niceness

pytestmark = pytest.mark.anyio

WAITS_FOR_INPUT = [str(NU), "-n", "--no-std-lib", "--stdin", "-c", "$in | str upcase | print"]


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
def without_pidfd(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A kernel that refuses pidfd_open (before Linux 5.3, or a seccomp profile that does not know it)."""

    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", refused)
    pidfd_usable.cache_clear()
    yield
    monkeypatch.undo()
    pidfd_usable.cache_clear()


async def run_to_end(tmp_path: Path, *, nice: int = 0) -> tuple[int, bytes, list[int]]:
    """Starts `nu` waiting for its input, reads the niceness of its threads meanwhile, then hands it a word."""
    process = await start_process(WAITS_FOR_INPUT, stdin=True, cwd=tmp_path, env=base_env(tmp_path), nice=nice)
    with anyio.fail_after(WAIT):
        niceness = thread_niceness(process.pid)
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(b"spare")
        await process.stdin.aclose()
        out = b"".join([chunk async for chunk in process.stdout])
        code = await process.wait()
        await process.aclose()
    return code, out, niceness


async def test_a_process_runs_and_is_reaped(tmp_path: Path) -> None:
    before = open_fds()
    code, out, _ = await run_to_end(tmp_path)
    assert (code, out.strip()) == (0, b"SPARE")
    assert open_fds() == before  # the pidfd and the three pipes are closed


async def test_every_thread_is_born_nicer(tmp_path: Path) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    _, _, niceness = await run_to_end(tmp_path, nice=5)
    assert niceness and set(niceness) == {min(19, own + 5)}, niceness
    _, _, niceness = await run_to_end(tmp_path, nice=0)
    assert set(niceness) == {own}


async def test_a_killed_process_reports_its_signal(tmp_path: Path) -> None:
    process = await start_process(WAITS_FOR_INPUT, stdin=True, cwd=tmp_path, env=base_env(tmp_path))
    process.kill()
    with anyio.fail_after(WAIT):
        assert await process.wait() == -9
        await process.aclose()
    process.kill()  # reaped: no signal goes to whoever has the id now


async def test_without_pidfd_anyio_starts_it(tmp_path: Path, without_pidfd: None) -> None:
    assert not pidfd_usable()
    before = open_fds()
    code, out, niceness = await run_to_end(tmp_path, nice=3)
    assert (code, out.strip()) == (0, b"SPARE")
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert min(19, own + 3) in niceness  # lowered once started: its first thread at least
    assert open_fds() == before


async def test_a_start_that_fails_half_way_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors while its pipes are being watched: the process is killed and reaped, and every
    descriptor made for it is closed."""
    before = open_fds()
    started: list[int] = []
    adopt = processes._PidfdProcess.adopt

    async def no_more(loop: asyncio.AbstractEventLoop, pipe: object, made: list[object]) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def adopt_noting_the_pid(popen: subprocess.Popen[bytes]) -> processes._PidfdProcess:
        started.append(popen.pid)
        return await adopt(popen)

    monkeypatch.setattr(processes, "_read_pipe", no_more)
    monkeypatch.setattr(processes._PidfdProcess, "adopt", adopt_noting_the_pid)
    with pytest.raises(OSError, match="Too many open files"):
        await start_process(WAITS_FOR_INPUT, stdin=True, cwd=tmp_path, env=base_env(tmp_path))
    await anyio.lowlevel.checkpoint()  # closed transports let go of their pipes on the next turn of the loop
    assert open_fds() == before
    assert len(started) == 1
    with pytest.raises(ChildProcessError):  # killed and reaped already: not a child of ours any more
        os.waitpid(started[0], os.WNOHANG)  # noqa: ASYNC222 (never blocks: WNOHANG)


async def test_a_cancelled_start_still_completes(tmp_path: Path) -> None:
    """Cancelled while it starts, the start completes: the caller gets a process it can stop."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        process = await start_process(WAITS_FOR_INPUT, stdin=True, cwd=tmp_path, env=base_env(tmp_path))
    process.kill()
    with anyio.fail_after(WAIT):
        assert await process.wait() == -9
        await process.aclose()


def test_a_process_forked_after_a_start_starts_processes_of_its_own(tmp_path: Path) -> None:
    """A process forked from this one once it has started one (mutation testing forks the test process) has none
    of the starters' threads: its own starts get threads of its own, never a pool it cannot run."""
    assert asyncio.run(run_to_end(tmp_path))[:2] == (0, b"SPARE\n")
    pid = os.fork()
    if pid == 0:  # the child: exits 0 once its start has run to the end, never returns into pytest
        code = 1
        try:
            code = 0 if asyncio.run(run_to_end(tmp_path))[:2] == (0, b"SPARE\n") else 1
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    try:
        exited, _, _ = select.select([pidfd], [], [], WAIT)
        if not exited:
            os.kill(pid, signal.SIGKILL)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the forked process's start never ran"
        assert exited
    finally:
        os.close(pidfd)
