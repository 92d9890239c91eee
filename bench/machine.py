"""The machine a run measures on: its CPUs, load and the versions of what runs, written at the head of a result."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from service.app.natsserver import nats_server_binary

from .options import ROOT, SERVICE_SOURCE


def machine_info(nu: Path) -> dict[str, Any]:
    def output(argv: Sequence[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout.decode().strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unknown ({exc})"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "service"])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_py": metadata.version("nats-py"),
        "nats_server": output([nats_server_binary(), "--version"]),
        "nu": output([str(nu), "--version"]),
        "git": f"{git}{' + uncommitted changes in service/' if dirty else ''}",
        "service_source": str(SERVICE_SOURCE),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
