"""Generates `schemas/`, the published contract, from the msgspec structs in `service/contract/messages.py`.

    python -m service.app.schemas [OUTDIR]           write what changed (default OUTDIR: schemas)
    python -m service.app.schemas --check [OUTDIR]   exit 1 and list the files that differ (for CI)

One JSON Schema (draft 2020-12, standing alone with its own `$defs`) per request, per subject's reply envelope
and per event (`schemas_json.py`), and an AsyncAPI 3.0.0 document of every subject (`schemas_asyncapi.py`).
This module writes them, byte for byte the same for the same code, and finds the files that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .schemas_asyncapi import ASYNCAPI, asyncapi
from .schemas_json import message_schemas


def render(document: dict[str, Any]) -> bytes:
    """Deterministic bytes: sorted keys, two-space indent, a trailing newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def generate() -> dict[str, bytes]:
    """File name -> the bytes the code says it should hold."""
    files = {name: render(schema) for name, schema in message_schemas().items()}
    files[ASYNCAPI] = render(asyncapi())
    return dict(sorted(files.items()))


def differences(outdir: Path, files: dict[str, bytes] | None = None) -> list[str]:
    """What in `outdir` differs from the generated files: 'NAME: differs|missing|not generated'."""
    files = generate() if files is None else files
    problems = []
    for name, data in files.items():
        path = outdir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_bytes() != data:
            problems.append(f"{path}: differs")
    problems += [f"{path}: not generated" for path in _stale(outdir, files)]
    return problems


def write(outdir: Path) -> list[str]:
    """Writes the files whose content changed and removes stale `*.json`; returns what it did."""
    files = generate()
    outdir.mkdir(parents=True, exist_ok=True)
    done = []
    for name, data in files.items():
        path = outdir / name
        if not path.is_file() or path.read_bytes() != data:
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            done.append(f"wrote {path}")
    for path in _stale(outdir, files):
        path.unlink()
        done.append(f"removed {path}")
    return done


def _stale(outdir: Path, files: Iterable[str]) -> list[Path]:
    # The folder belongs to the generator: a `*.json` it does not write is a message that no longer exists.
    if not outdir.is_dir():
        return []
    return sorted(path for path in outdir.glob("*.json") if path.name not in set(files))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.app.schemas", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("outdir", nargs="?", default="schemas", type=Path, help="default: schemas")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any file differs")
    args = parser.parse_args(argv)
    outdir: Path = args.outdir
    if args.check:
        problems = differences(outdir)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{outdir} is not what the code generates: run `make schemas`", file=sys.stderr)
            return 1
        print(f"{outdir}: up to date")
        return 0
    done = write(outdir)
    for line in done:
        print(line)
    if not done:
        print(f"{outdir}: up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
