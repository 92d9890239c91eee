"""The Nushell runner: runs the project's loader module, one `nu` process per cold load, in the sandbox.

It finds `nu`, asks the loader module (`nushell/provisioning.nu`) for one load, and reads what the module
prints: a load result, or one of the contract's errors. At most `max_concurrent` runs at once; at most
`max_pending` wait for a slot, and a load beyond that is refused at once with `Unavailable` rather than left
to pile up. How a process is confined (limits, environment, process group, output cap) is `sandbox.py`'s.
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
from .sandbox import Limits, Sandbox, SandboxMissing, base_env

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
    ) -> None:
        """`allow_unlimited`, `search_path`: see `Sandbox`."""
        self.nu = nu
        self.roots = tuple(roots)
        self.cache_dir = cache_dir
        self.limits = limits
        self.workdir = cache_dir / ".work"
        self._slots = anyio.CapacityLimiter(limits.max_concurrent)
        self._waiting = 0
        self.sandbox = Sandbox(limits, allow_unlimited=allow_unlimited, search_path=search_path)

    @property
    def running(self) -> int:
        return int(self._slots.borrowed_tokens)

    @property
    def waiting(self) -> int:
        return self._waiting

    def prepare(self) -> None:
        """Creates the working folder; an unwritable cache directory fails here, with its path."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LoadFailed(f"cannot create the cache directory {self.cache_dir}: {exc.strerror}") from None

    async def load(self, extension_type: ExtensionType, name: str, version: str) -> LoadResult:
        argv = ["module", "load", extension_type.value, name, "--version", version, "--output", "json"]
        with tracer.start_as_current_span("nushell module load", kind=trace.SpanKind.INTERNAL) as span:
            span.set_attribute("process.executable.path", str(self.nu))
            span.set_attribute("process.command_args", argv)
            stdout = await self._run(argv)
            try:
                return msgspec.json.decode(stdout, type=LoadResult)
            except msgspec.DecodeError as exc:
                raise LoadFailed(f"the loader printed output that is not a load result: {exc}", exit_code=0) from None

    async def _run(self, args: Sequence[str]) -> bytes:
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
            return await self._spawn(args)
        finally:
            self._slots.release()

    async def _spawn(self, args: Sequence[str]) -> bytes:
        if not os.access(self.nu, os.X_OK):
            raise Unavailable(f"Nushell cannot be started: {self.nu} is missing or not executable")
        env = {
            **base_env(self.workdir),
            "PROVISIONING_EXTENSION_PATHS": ":".join(str(r) for r in self.roots),
            "PROVISIONING_EXTENSION_CACHE": str(self.cache_dir),
        }
        self.prepare()
        command = [str(self.nu), "-n", "--no-std-lib", str(MODULE), *args]
        done = await self.sandbox.run(command, cwd=self.workdir, env=env)
        return _outcome(done.returncode, done.stdout, done.stderr)


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
