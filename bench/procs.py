"""Processes of a benchmark run: the children it starts (in their own session, logged to a file, always killed),
and what /proc tells of a process (its descendants, CPU time, memory, what it waits on)."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


class Child:
    """One subprocess; its output goes to `log`, and `stop()` ends it and everything it started."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str],
        cwd: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.log = log
        self.env = dict(env)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not started"
        return self.process.pid

    def start(self) -> Child:
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    def exited(self) -> int | None:
        """The exit status, or None while it runs."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def main_pid(self, marker: str) -> int:
        """The pid of the deepest process whose command line holds `marker`: this one, or a descendant
        when the command is a wrapper such as a profiler."""
        found = self.pid
        for pid in [self.pid, *descendants(self.pid)]:
            if marker in _cmdline(pid):
                found = pid
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """`stop_signal` to its group, SIGKILL after `timeout`; then SIGKILL whatever it started that is left."""
        if self.process is None:
            return
        try:
            family = descendants(self.pid)
            if self.process.poll() is None:
                _signal_group(self.pid, self.stop_signal)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(self.pid, signal.SIGKILL)
                    self.process.wait(timeout)
            # Nushell runs live in sessions of their own; a service that was killed cannot reap them.
            for pid in [*family, *descendants(self.pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _signal_group(self.pid, signal.SIGKILL)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry / "stat")
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # the parent, field 4 of stat(5)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc/.../stat file from the state on (field 3 of stat(5) first); [] once it is gone. The
    command name before them is in parentheses and may hold spaces."""
    try:
        stat = path.read_text()
    except OSError:
        return []
    return stat[stat.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (clock-tick resolution); 0.0 once it is gone."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0  # utime and stime, fields 14 and 15


def reaped_children_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the children a process has waited for (with theirs): for the service, what
    its Nushell processes used once they are over. 0.0 once the process is gone."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[13]) + int(fields[14])) / _TICK if fields else 0.0  # cutime and cstime, fields 16 and 17


def cpu_floor(seconds: Sequence[float]) -> dict[str, Any]:
    """The median CPU time the Nushell processes of a run used, and the least wall time that much CPU takes on
    this machine's cores: what no scheduling of those processes can go below. (Spares taken by the run count
    with what they used before it; replacements still waiting at its end do not.)"""
    cpus = os.cpu_count() or 1
    used_ms = statistics.median(seconds) * 1000 if seconds else 0.0
    return {"nushell_cpu_ms": round(used_ms, 1), "cpus": cpus, "cpu_floor_ms": round(used_ms / cpus, 1)}


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def command_line(pid: int) -> str:
    """The process's arguments joined by spaces; "" once it is gone."""
    return _cmdline(pid)


def shared_memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss (its shared pages divided among the processes that share them) in KiB, from
    /proc/<pid>/smaps_rollup; Pss is what a process adds when several map the same binary."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key] = int(value.split()[0])
    return out


def reading_a_pipe(pid: int) -> bool:
    """Whether the process sleeps in a read from a pipe (its wchan, e.g. `pipe_read` or `anon_pipe_read`)."""
    try:
        return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
