"""The sandbox every Nushell process runs in: extensions are untrusted code.

A run gets an argument list (never a shell string), a clean environment, a fixed working folder, its own
process group, resource limits set before `nu` starts (`prlimit`: address space, CPU time, file size, open
files, no core files), a lower scheduling priority than the service's own (`nice`), a wall-clock limit after
which the whole group is killed, and a cap on the output it may print. Whatever happens, the group is killed
and `nu` reaped before `run` returns, so no process or zombie stays behind. Knows nothing of what the process
is asked to do: that is the runner's business.

A run may also be started ahead of its input (`start`, then `SandboxedProcess.hand_over` and `finish`): the
process waits on its standard input, and the wall-clock limit counts from the hand-over.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from ..contract.errors import LoadFailed, LoadTimeout, Unavailable
from .processes import start_process

log = logging.getLogger(__name__)

PRLIMIT_MISSING = (
    "prlimit (util-linux) was not found on PATH, so Nushell would run extensions without memory, CPU-time and "
    "file-size limits: install util-linux, or set nushell.allow_unlimited = true to run them without limits"
)


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float = 30.0
    max_concurrent: int = 4
    max_pending: int = 64
    max_memory_mb: int = 512
    max_output_kb: int = 1024
    max_file_mb: int = 64
    nice: int = 10  # added to the service's own niceness: Nushell yields the CPU to the service's answers


class SandboxMissing(Exception):
    """`prlimit` is not there to limit Nushell, and the configuration does not allow running without limits."""


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int | None
    stdout: bytes
    stderr: bytes


# The loader runs no command of the system, and an extension is not to run any: PATH leads nowhere. Nushell does
# look for one on its own: without a terminal it starts `tput` (columns, lines) twice as it starts, 4-5 ms of a
# 50 ms run here; a `tput` that is not found costs nothing. (Not an empty PATH: that would mean the working folder.)
NO_COMMANDS = "/nonexistent"


def base_env(home: Path) -> dict[str, str]:
    """The whole environment a sandboxed process starts from: nothing of the service's own."""
    return {"PATH": NO_COMMANDS, "HOME": str(home), "LANG": "C.UTF-8"}


class Sandbox:
    def __init__(self, limits: Limits, *, allow_unlimited: bool = False, search_path: str | None = None) -> None:
        """`search_path`: where `prlimit` is looked for (None: PATH). Without it the sandbox refuses to exist
        (SandboxMissing) unless `allow_unlimited` says Nushell may run without limits."""
        self.limits = limits
        self.prlimit = shutil.which("prlimit", path=search_path)
        if self.prlimit is None:
            if not allow_unlimited:
                raise SandboxMissing(PRLIMIT_MISSING)
            log.warning("prlimit not found: Nushell runs without memory, CPU and file-size limits (allow_unlimited)")

    def argv(self, command: Sequence[str]) -> list[str]:
        """The command, with the resource limits set before it starts. The CPU-time limit counts from the start:
        a process started ahead of its input has spent some (Nushell's start and parse, about 50 ms) by the
        hand-over, none while it waits; at least 0.9 s of it is left, and the wall-clock limit of `finish`,
        counted from the hand-over, is what stops a run that takes too long."""
        if self.prlimit is None:
            return list(command)
        limits = self.limits
        return [
            self.prlimit,
            f"--as={limits.max_memory_mb * 1024 * 1024}",
            f"--cpu={max(1, math.ceil(limits.timeout_s))}",
            f"--fsize={limits.max_file_mb * 1024 * 1024}",
            "--nofile=1024",
            "--core=0",
            "--",
            *command,
        ]

    async def start(
        self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdin: bool = False
    ) -> SandboxedProcess:
        """Starts the command within the limits; `stdin`: with a pipe on its standard input, for `hand_over`
        (otherwise it reads nothing). The caller owns the process: it must `finish` or `stop` it. Raises
        Unavailable when it cannot be started."""
        # Not cut short half-way: a cancelled start would leave a process that nobody owns.
        with anyio.CancelScope(shield=True):
            try:
                process = await start_process(self.argv(command), stdin=stdin, cwd=cwd, env=env, nice=self.limits.nice)
            except OSError as exc:
                raise Unavailable(f"Nushell cannot be started: {exc}") from None
        return SandboxedProcess(process, self.limits, command)


class SandboxedProcess:
    """One process started in the sandbox, in a process group of its own (its id is the process's)."""

    def __init__(self, process: Process, limits: Limits, command: Sequence[str]) -> None:
        self.process = process
        self.limits = limits
        self.command = list(command)  # as given, without the limits put before it
        self.started = time.monotonic()
        self.ended = anyio.Event()  # set once it is reaped

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Neither seen to exit nor on its way out: a process killed a moment ago is not yet reaped, and may not
        even have closed its pipes, but the kernel already shows it dying."""
        return self.process.returncode is None and not _dying(self.process.pid)

    async def hand_over(self, data: bytes) -> bool:
        """Writes `data` to the process's standard input and closes it; False when the process is no longer
        there to read it (it exited, or was killed, while it waited)."""
        stdin = self.process.stdin
        if stdin is None:
            return self.alive
        with anyio.move_on_after(self.limits.timeout_s):
            try:
                if data:
                    await stdin.send(data)
                await stdin.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return False
            return True
        return False  # a pipe that cannot take a few bytes: nobody reads it

    async def finish(self) -> Finished:
        """Runs the process to its end within the time limit, counted from now, and the output cap. Raises
        LoadTimeout past the time limit, LoadFailed past the output cap. The group is killed and the process
        reaped before this returns, whatever happens."""
        process = self.process
        limits = self.limits
        cap = limits.max_output_kb * 1024
        out = bytearray()
        err = bytearray()
        overflow: list[str] = []
        try:
            with anyio.move_on_after(limits.timeout_s) as deadline:
                async with anyio.create_task_group() as tg:
                    assert process.stdout is not None and process.stderr is not None
                    tg.start_soon(_collect, process.stdout, out, cap, "standard output", overflow, process)
                    tg.start_soon(_collect, process.stderr, err, cap, "standard error", overflow, process)
                await process.wait()
        finally:
            await self.stop()
        if deadline.cancelled_caught:
            raise LoadTimeout(limits.timeout_s)
        if overflow:
            raise LoadFailed(f"the loader's {overflow[0]} passed the limit of {limits.max_output_kb} KB")
        return Finished(process.returncode, bytes(out), bytes(err))

    async def stop(self) -> None:
        """Kills the process group and reaps the process; safe to call again."""
        try:
            with anyio.CancelScope(shield=True):
                await _reap(self.process)
        finally:
            self.ended.set()


async def _collect(
    stream: ByteReceiveStream, into: bytearray, cap: int, what: str, overflow: list[str], process: Process
) -> None:
    async for chunk in stream:
        into += chunk
        if len(into) > cap:
            overflow.append(what)
            _kill_group(process)
            return


_PF_EXITING = 0x4  # include/linux/sched.h
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def _dying(pid: int) -> bool:
    """Whether /proc shows the process gone, a zombie, exiting, or with SIGKILL pending (False without /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status", "rb") as fh:
            status = fh.read()
    except FileNotFoundError:
        return os.path.isdir("/proc/self")
    except OSError:
        return False
    # After the command name, in parentheses and free to hold anything: state, ppid, pgrp, session, tty, tpgid, flags.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X") or int(fields[6]) & _PF_EXITING:
        return True
    for line in status.splitlines():
        if line.startswith((b"SigPnd:", b"ShdPnd:")) and int(line.split()[1], 16) & _SIGKILL_BIT:
            return True
    return False


def _kill_group(process: Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _reap(process: Process) -> None:
    """Kills what is left of the run's process group and waits for `nu`, so no zombie stays behind."""
    _kill_group(process)
    await process.wait()
    await process.aclose()
