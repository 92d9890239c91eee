"""The children a run talks to, the service above all: starting them, waiting until they answer, one request to
the service, and its spare Nushell processes (how many it keeps, and waiting until they are ready)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from service.contract.config import defaults

from .options import ROOT, BenchError, Options
from .procs import Child, command_line, descendants, reading_a_pipe

PREFIX = "extensions"
ECHO_SUBJECT = "bench.echo"
ECHO_CT_SUBJECT = "bench.echo-ct"
SERVICE_PING = "$SRV.PING.extension-loader"
SERVICE_MARKER = " serve --nats-url "  # in the service's command line, not in a wrapper's or Nushell's
LOAD = {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"}
HEADERS = {"Content-Type": "application/json"}
READY_WITHIN_S = 30.0
REQUEST_TIMEOUT_S = 30.0


def start_child(children: list[Child], name: str, argv: Sequence[str], logs: Path, **kw: Any) -> Child:
    child = Child(name, argv, log=logs / f"{name}.log", env=_child_env(), cwd=ROOT, **kw)
    children.append(child)
    return child.start()


def start_service(
    children: list[Child], options: Options, url: str, data: Path, roots: Sequence[Path], log: Path
) -> Child:
    exe = Path(sys.executable).with_name("extension-loader")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "service"]
    sets = {
        "orchestrator.paths.data_dir": toml_string(str(data)),
        "orchestrator.extensions.paths": "[" + ", ".join(toml_string(str(r)) for r in roots) + "]",
        "orchestrator.extensions.auto_load": "false",
        "nushell.path": toml_string(str(options.nu)),
    }
    wrap = [part.replace("{name}", log.stem) for part in options.wrap]
    argv = [*wrap, *command, "serve", "--nats-url", url]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    for item in options.service_sets:
        argv += ["--set", item]
    # SIGINT stops the service as SIGTERM does, and lets a profiler that wraps it write its output.
    stop = signal.SIGINT if options.wrap else signal.SIGTERM
    return start_child(children, log.stem, argv, log.parent, stop_signal=stop)


def _child_env() -> dict[str, str]:
    """This environment without the service's own settings and OpenTelemetry's, so every run is alike."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("EXTENSION_LOADER__", "OTEL_"))}


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string with no control characters is a TOML basic string


async def wait_ready(nc: Client, subject: str, child: Child, within_s: float = READY_WITHIN_S) -> float:
    """Sends requests to `subject` until one is answered; returns the seconds that took."""
    began = time.perf_counter()
    while True:
        code = child.exited()
        if code is not None:
            raise BenchError(f"{child.name} exited with status {code} before it was ready:\n{child.log_tail()}")
        try:
            await nc.request(subject, b"", timeout=0.5)
            return round(time.perf_counter() - began, 3)
        except (TimeoutError, nats.errors.Error):
            pass
        if time.perf_counter() - began > within_s:
            raise BenchError(f"{child.name} did not answer {subject} within {within_s} s:\n{child.log_tail()}")
        await asyncio.sleep(0.02)  # a poll interval while the process starts, not a wait for an outcome


async def call(nc: Client, suffix: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the service; its `data`, or BenchError with the error reply."""
    reply = await nc.request(
        f"{PREFIX}.{suffix}", msgspec.json.encode(body or {}), timeout=REQUEST_TIMEOUT_S, headers=HEADERS
    )
    envelope = msgspec.json.decode(reply.data)
    if not envelope.get("success"):
        raise BenchError(f"{PREFIX}.{suffix} {body}: {envelope.get('error')}")
    return envelope.get("data")


# --- spare Nushell processes ----------------------------------------------------------------------------------

SPARE_MARKER = " module serve-one --ahead"  # in a waiting spare's command line (prlimit's, then nu's)
SPARES_READY_WITHIN_S = 10.0


def expected_spares(options: Options) -> int:
    """How many spares the service keeps: the last `--set nushell.spares=N`, else the packaged default."""
    count = int(defaults()["nushell"]["spares"])
    for item in options.service_sets:
        key, _, value = item.partition("=")
        if key.strip() == "nushell.spares":
            count = int(value)
    return count


async def wait_for_all_spares(spares: dict[int, int]) -> None:
    """Every service's spares ready (`spares`: how many, by pid): before a timed cold load, so that no service is
    starting a spare (tens of milliseconds of CPU) on a machine of two cores while the load runs. The loads of two
    services compared one after the other each met the other's spare being replaced otherwise, at random."""
    for pid, count in spares.items():
        await wait_for_spares(pid, count)


async def wait_for_spares(pid: int, count: int, within_s: float = SPARES_READY_WITHIN_S) -> list[int]:
    """Polls /proc until the service `pid` has `count` spares started and blocked reading their request (done
    with their start, parse and warm-up); their pids."""
    began = time.perf_counter()
    while True:
        spares = [p for p in descendants(pid) if SPARE_MARKER in command_line(p)]
        if len(spares) >= count and all(reading_a_pipe(p) for p in spares):
            return spares
        if time.perf_counter() - began > within_s:
            raise BenchError(f"the service (pid {pid}) has {len(spares)} spare processes, not {count}")
        await asyncio.sleep(0.02)  # a poll interval: the service process cannot be asked
