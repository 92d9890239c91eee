"""Loaders of the edge benchmarks, each a child process (`extension-loader serve`) that can be stopped and started
again on the same data folder: its saved index and kept archives survive, as across a restart in production.

A loader logs in as nats.conf's `loader` over TLS with deploy/loader.toml's settings (events captured by the
account EVENTS, the registry's read API under `$JS.reg.API`), `orchestrator.extensions.auto_load` off. Every
start is an incarnation with a log file of its own (`<name>-<n>.log`), and a new instance id, read from the line
the service logs once it serves ("... as instance <id>"); `instances` maps every id it had to its name, so that
the events it announced are told apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .edge_site import EVENTS_API, REG_API, Node
from .options import BenchError, Options
from .procs import Child
from .services import SERVICE_MARKER, start_service, toml_string

READY_WITHIN_S = 60.0
POLL_S = 0.05
_SERVING = "as instance "  # the end of the service's "serving ... in queue group ... as instance <id>" line


@dataclass
class Incarnation:
    """One start of a loader: its instance id, when it served (monotonic) and when it was told to stop."""

    instance_id: str
    ready: float
    stopped: float | None = None


class SiteLoader:
    """One loader of the site (or of another node), restarted as often as asked."""

    def __init__(
        self,
        name: str,
        node: Node,
        ca: Path,
        work: Path,
        logs: Path,
        options: Options,
        *,
        roots: Sequence[Path] = (),
        registry: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.node = node
        self.data = work / f"data-{name}"
        self.logs = logs
        self.roots = list(roots)
        if not self.roots:
            empty = work / f"{name}-no-tree"
            empty.mkdir(parents=True, exist_ok=True)
            self.roots = [empty]
        sets = {
            "nats.user": '"loader"',
            "nats.password": toml_string(node.password("loader")),
            "nats.tls_ca": toml_string(str(ca)),
            "events.jetstream": "false",
            "events.require_stream": "true",
            "events.api_prefix": toml_string(EVENTS_API),
            "registry.api_prefix": toml_string(REG_API),
            **(registry or {}),
        }
        self.options = replace(options, service_sets=(*options.service_sets, *(f"{k}={v}" for k, v in sets.items())))
        self.child: Child | None = None
        self.incarnations = 0
        self.instance_id = ""
        self.started_at = 0.0  # monotonic, when the current incarnation said it serves
        self.stopped_at = 0.0  # monotonic, when the last incarnation was told to stop
        self.history: list[Incarnation] = []

    @property
    def log(self) -> Path:
        return self.logs / f"{self.name}-{self.incarnations}.log"

    @property
    def pid(self) -> int:
        assert self.child is not None, f"{self.name} is not started"
        return self.child.main_pid(SERVICE_MARKER)

    async def start(self, children: list[Child]) -> str:
        """A new incarnation; returns its instance id once it serves (the registry read first, if it has one)."""
        self.incarnations += 1
        self.child = start_service(children, self.options, self.node.url, self.data, self.roots, self.log)
        self.instance_id = await self._serving(self.child)
        self.started_at = time.monotonic()
        self.history.append(Incarnation(self.instance_id, self.started_at))
        return self.instance_id

    async def stop(self) -> None:
        """SIGTERM, as a service manager stops it: it drains what it received, then exits."""
        self.stopped_at = time.monotonic()
        if self.history:
            self.history[-1].stopped = self.stopped_at
        if self.child is not None:
            await asyncio.to_thread(self.child.stop)
            self.child = None

    async def _serving(self, child: Child) -> str:
        began = time.monotonic()
        while True:
            for line in _lines(child.log):
                message = line.get("message", "")
                if isinstance(message, str) and message.startswith("serving ") and _SERVING in message:
                    return message.rsplit(_SERVING, 1)[1].strip()
            code = child.exited()
            if code is not None:
                raise BenchError(f"{child.name} exited with status {code} before it served:\n{child.log_tail()}")
            if time.monotonic() - began > READY_WITHIN_S:
                raise BenchError(f"{child.name} did not serve within {READY_WITHIN_S} s:\n{child.log_tail()}")
            await asyncio.sleep(POLL_S)  # a poll interval while the process starts, not a wait for an outcome

    def log_lines(self) -> list[dict[str, object]]:
        """Every JSON line of every incarnation's log."""
        return [line for n in range(1, self.incarnations + 1) for line in _lines(self.logs / f"{self.name}-{n}.log")]


def _lines(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out: list[dict[str, object]] = []
    for raw in text.splitlines():
        if raw.startswith("{"):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
    return out
