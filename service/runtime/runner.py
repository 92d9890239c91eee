"""The Nushell runner: runs the project's loader module, one `nu` process per cold load, in the sandbox.

It finds `nu`, asks the loader module (`nushell/provisioning.nu`) for one load, and reads what the module
prints: a load result, or one of the contract's errors. At most `max_concurrent` runs at once; at most
`max_pending` wait for a slot, and a load beyond that is refused at once with `Unavailable` rather than left
to pile up. How a process is confined (limits, environment, process group, output cap) is `sandbox.py`'s.

Each process serves one request and is gone, but it need not start when the request comes: while the runner's
context is entered it keeps `spares` processes started, with the module parsed, waiting on standard input
(`module serve-one`; `spares.py` keeps them). A load hands its request to one, or starts a process as before
when none is waiting. Outside the context, or with `spares = 0`, every load starts its own process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import msgspec
from opentelemetry import trace

from ..contract.errors import (
    InvalidExtension,
    LoaderError,
    LoadFailed,
    NotFound,
    Unavailable,
    VersionNotFound,
)
from ..contract.messages import ExtensionMetadata, ExtensionType
from .sandbox import Limits, Sandbox, SandboxedProcess, SandboxMissing, base_env
from .spares import SparePool

__all__ = [
    "MODULE",
    "Limits",
    "LoadResult",
    "NushellMissing",
    "NushellRunner",
    "SandboxMissing",
    "find_nu",
    "nu_version",
]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

MODULE = Path(__file__).with_name("nushell") / "provisioning.nu"
INSTALL_HINT = (
    "Nushell was not found. Install it with `npm ci` in the project folder (the native binary lands in "
    "node_modules/@nushell/linux-x64/bin/nu), put `nu` on PATH, or set [nushell] path in the configuration."
)
_STDERR_TAIL = 20


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the loader module prints for a successful load."""

    metadata: ExtensionMetadata
    path: str
    digest: str
    source: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str = ""
    details: dict[str, object] = {}


class _ErrorOutput(msgspec.Struct, frozen=True):
    error: _ErrorBody


class NushellMissing(Exception):
    """`nu` cannot be found or run; the message says how to install it."""


def find_nu(configured: str = "", *, search_from: Sequence[Path] = ()) -> Path:
    """The configured binary, else `nu` on PATH, else the native binary the npm package installs."""
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise NushellMissing(f"[nushell] path = {configured!r} is not an executable file. {INSTALL_HINT}")
        return path.resolve()
    on_path = shutil.which("nu")
    if on_path:
        return Path(on_path).resolve()
    platform = f"linux-{'arm64' if os.uname().machine in ('aarch64', 'arm64') else 'x64'}"
    starts = [*search_from, Path.cwd(), Path(__file__).resolve().parents[2], Path(sys.prefix).parent]
    for start in starts:
        candidate = start / "node_modules" / "@nushell" / platform / "bin" / "nu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise NushellMissing(INSTALL_HINT)


def nu_version(nu: Path) -> str:
    """`nu --version`, run once at start; raises NushellMissing when it does not answer."""
    try:
        done = subprocess.run(
            [str(nu), "--version"], capture_output=True, timeout=30, check=True, env=base_env(Path("/"))
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NushellMissing(f"{nu} --version failed: {exc}. {INSTALL_HINT}") from None
    return done.stdout.decode(errors="replace").strip()


class _Request(msgspec.Struct, frozen=True, omit_defaults=True):
    """What `module serve-one` reads on its standard input; `root`: the one extension root to search."""

    type: str
    name: str
    version: str
    root: str | None = None


class NushellRunner:
    def __init__(
        self,
        nu: Path,
        *,
        roots: Sequence[Path],
        cache_dir: Path,
        limits: Limits,
        allow_unlimited: bool = False,
        search_path: str | None = None,
        spares: int = 0,
        spare_max_age_s: float = 300.0,
    ) -> None:
        """`allow_unlimited`, `search_path`: see `Sandbox`. `spares`: processes kept waiting while the runner's
        context is entered, each replaced once `spare_max_age_s` old."""
        self.nu = nu
        self.roots = tuple(roots)
        self.cache_dir = cache_dir
        self.limits = limits
        self.workdir = cache_dir / ".work"
        self._slots = anyio.CapacityLimiter(limits.max_concurrent)
        self._waiting = 0
        self.sandbox = Sandbox(limits, allow_unlimited=allow_unlimited, search_path=search_path)
        self.spares = SparePool(self._start_ahead, self._fit, size=spares, max_age_s=spare_max_age_s)
        self.spare_runs = 0  # runs handed to a spare
        self.fresh_runs = 0  # runs that started their own process

    async def __aenter__(self) -> Self:
        """Starts keeping the spares; returns once each has been started (or has failed to start)."""
        if self.spares.size:
            await self.spares.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Kills and reaps the spares still waiting; runs in progress reap their own processes."""
        await self.spares.__aexit__(exc_type, exc, tb)

    @property
    def running(self) -> int:
        return int(self._slots.borrowed_tokens)

    def prepare(self) -> None:
        """Creates the working folder; an unwritable cache directory fails here, with its path."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LoadFailed(f"cannot create the cache directory {self.cache_dir}: {exc.strerror}") from None

    async def load(
        self, extension_type: ExtensionType, name: str, version: str, *, root: Path | None = None
    ) -> LoadResult:
        """Loads one version; `root`: search that extension root only, not the configured ones (a registry
        version, unpacked)."""
        request = _Request(extension_type.value, name, version, str(root) if root is not None else None)
        request_bytes = msgspec.json.encode(request) + b"\n"
        with tracer.start_as_current_span("nushell module load", kind=trace.SpanKind.INTERNAL) as span:
            span.set_attribute("process.executable.path", str(self.nu))
            stdout = await self._run(request_bytes, span)
            try:
                return msgspec.json.decode(stdout, type=LoadResult)
            except msgspec.DecodeError as exc:
                raise LoadFailed(f"the loader printed output that is not a load result: {exc}", exit_code=0) from None

    async def _run(self, request: bytes, span: trace.Span) -> bytes:
        if self._slots.available_tokens == 0 and self._waiting >= self.limits.max_pending:
            raise Unavailable(
                f"overloaded: {self.running} Nushell runs and {self._waiting} waiting "
                f"(nushell.max_concurrent = {self.limits.max_concurrent}, max_pending = {self.limits.max_pending})"
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            process = await self._process(request)
            span.set_attribute("process.pid", process.pid)
            span.set_attribute("process.command_args", process.command)
            done = await process.finish()
            return _outcome(done.returncode, done.stdout, done.stderr)
        finally:
            self._slots.release()

    async def _process(self, request: bytes) -> SandboxedProcess:
        """A process that has been handed `request`: a spare, or one started now. Ours to finish."""
        key = self._fit()
        while (spare := self.spares.take(key)) is not None:
            if await _handed(spare, request):
                self.spare_runs += 1
                return spare
            # Killed while it waited, a moment before the pool could see it.
            log.info("spare Nushell process %d was gone at hand-over; taking another", spare.pid)
            await spare.stop()
        process = await self._start()
        self.fresh_runs += 1
        # One that cannot read it has already failed: `finish` tells how.
        await _handed(process, request)
        return process

    async def _start(self, *, ahead: bool = False) -> SandboxedProcess:
        """`module serve-one` started, waiting for its request on standard input; `ahead`: a spare, which warms
        up meanwhile."""
        command = [str(self.nu), "-n", "--no-std-lib", str(MODULE), "module", "serve-one"]
        env = {
            **base_env(self.workdir),
            "PROVISIONING_EXTENSION_PATHS": ":".join(str(r) for r in self.roots),
            "PROVISIONING_EXTENSION_CACHE": str(self.cache_dir),
        }
        self.prepare()
        return await self.sandbox.start(
            [*command, "--ahead"] if ahead else command, cwd=self.workdir, env=env, stdin=True
        )

    async def _start_ahead(self) -> SandboxedProcess:
        return await self._start(ahead=True)

    def _fit(self) -> tuple[object, ...]:
        """What a process started now would run with: the extension roots, the cache folder, the working
        folder, and `nu` and the loader module as they are on disk. A spare started with anything else (`nu`
        upgraded, the module edited, the working folder removed and made again) is not used. Raises
        Unavailable when `nu` cannot be started."""
        if not os.access(self.nu, os.X_OK):
            raise Unavailable(f"Nushell cannot be started: {self.nu} is missing or not executable")
        self.prepare()
        try:
            nu, module, workdir = os.stat(self.nu), os.stat(MODULE), os.stat(self.workdir)
        except OSError as exc:
            raise Unavailable(f"Nushell cannot be started: {exc}") from None
        return (
            self.roots,
            self.cache_dir,
            *((f.st_dev, f.st_ino, f.st_size, f.st_mtime_ns) for f in (nu, module)),
            (workdir.st_dev, workdir.st_ino),  # a folder's time changes with what is put in it
        )


async def _handed(process: SandboxedProcess, request: bytes) -> bool:
    """`hand_over`, and the process stopped if that is cut short: no one else would reap it."""
    try:
        return await process.hand_over(request)
    except BaseException:
        await process.stop()
        raise


def _outcome(returncode: int | None, stdout: bytes, stderr: bytes) -> bytes:
    tail = "\n".join(stderr.decode(errors="replace").strip().splitlines()[-_STDERR_TAIL:])
    if returncode == 0:
        return stdout
    if returncode == 3:
        try:
            body = msgspec.json.decode(stdout, type=_ErrorOutput).error
        except msgspec.DecodeError:
            raise LoadFailed("the loader failed without a readable error", exit_code=3, stderr=tail) from None
        raise _error_from(body)
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-returncode}"
        raise LoadFailed(
            f"Nushell was killed by {name} (a memory, CPU or file-size limit?)",
            exit_code=returncode,
            stderr=tail,
        )
    raise LoadFailed(f"Nushell exited with status {returncode}", exit_code=returncode, stderr=tail)


def _error_from(body: _ErrorBody) -> LoaderError:
    d = body.details
    if body.code == "invalid_extension":
        problems = d.get("problems")
        return InvalidExtension(
            str(d.get("path", "")),
            [str(p) for p in problems] if isinstance(problems, list) else [body.message],
        )
    if body.code == "not_found":
        return NotFound(str(d.get("extension_type", "extension")), str(d.get("name", "")))
    if body.code == "version_not_found":
        available = d.get("available")
        return VersionNotFound(
            str(d.get("extension_type", "extension")),
            str(d.get("name", "")),
            str(d.get("requested", "")),
            [str(v) for v in available] if isinstance(available, list) else [],
        )
    return LoadFailed(body.message or body.code, exit_code=3)
