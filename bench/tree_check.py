"""What the check of an unpacked tree against its signed tree digest costs: every cold load of a registry version
computes `core.folders.tree_digest` of the tree it unpacked (and of a tree kept from before), and compares it with
the digest its release statement signs.

Two trees, each packed with `registry.archive.pack` and unpacked with `registry.archive.unpack` (the configuration's
default limits) as a loader would unpack them:

  large  a generated version folder shaped like an extension, whose archive is about `size` bytes: many small
         `.nu` and `.toml` files of text (which compress) and a few larger data files of random bytes (which do
         not) making up the rest
  small  a typical extension of the examples (`taskservs/kubernetes/1.28.0`)

For each, `runs` rounds (after one warm-up), the order turning each round: the unpack into a new folder, then
`tree_digest` of the unpacked tree (its files read back from the page cache, as on a load right after its
unpack), and the floor: one bare `hashlib.sha256` over the same files' bytes, held in memory. p50 and p90 in ms,
and MB/s (10^6 bytes a second) of the unpacked bytes at the p50. The digest of the unpacked tree must be the
digest of the folder that was packed, or the run stops.

`python -m bench.tree_check [--quick] [--size BYTES] [--runs N]` runs it alone; `make bench` runs it after the
registry fetch. Timings are reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.contract.config import load_config
from service.core.fetching import unpack_limits
from service.core.folders import tree_digest
from service.registry.archive import UnpackLimits, pack, unpack

from .durability_writes import filesystem
from .load import summary_ms

SIZE = 10_000_000  # the large archive's bytes, about
RUNS = 11
QUICK_SIZE = 300_000
QUICK_RUNS = 2
SMALL_RUNS_FACTOR = 10  # the small tree takes well under a millisecond: more rounds of it
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "extensions" / "taskservs" / "kubernetes" / "1.28.0"
SMALL_FILES = 400  # the large folder's text files, half `.nu` and half `.toml`
DATA_FILES = 4  # the large folder's files of random bytes
STEPS = ("unpack", "tree_digest", "sha256")
_VOCABULARY = (  # the words of the generated text files
    "let def export use module if else for each where select get update insert append length str int record list "
    "config name version path image port replicas cluster node service volume token secret template render"
)


def measure(work: Path, *, size: int = SIZE, runs: int = RUNS, example: Path = EXAMPLE) -> dict[str, Any]:
    """Both trees, generated, packed and unpacked under `work` (which must exist), each timed `runs` times (the
    small one `runs * SMALL_RUNS_FACTOR` times)."""
    if size <= 0 or runs <= 0:
        raise ValueError("the size and the number of runs are positive")
    limits = unpack_limits(load_config(environ={}).registry)
    large = make_folder(work / "large-source", size)
    small = _measure_tree(example, work / "small", runs * SMALL_RUNS_FACTOR, limits)
    return {
        "size_target_bytes": size,
        "folder": str(work),  # where the trees are unpacked: what creating a file costs depends on it
        "filesystem": filesystem(work),
        "large": _measure_tree(large, work / "large", runs, limits),
        "small": {"example": str(example.relative_to(ROOT) if example.is_relative_to(ROOT) else example), **small},
    }


def make_folder(folder: Path, size: int) -> Path:
    """A version folder like an extension's whose archive is about `size` bytes: `metadata.toml`, `mod.nu`,
    `SMALL_FILES` text files under `templates/` and `config/`, and `DATA_FILES` files of random bytes under
    `data/` that fill the archive up to `size` (text files alone past it: no data files)."""
    rng = random.Random(size)
    folder.mkdir(parents=True)
    (folder / "metadata.toml").write_text(
        'name = "tree-check"\nversion = "1.0.0"\ndescription = "tree check benchmark"\ntype = "taskserv"\n'
        "dependencies = []\n"
    )
    (folder / "mod.nu").write_text("export def check [] { {ok: true} }\n")
    text_bytes = max(2_000, min(size // 8, 2_000_000))  # the text's share before compression
    for i in range(SMALL_FILES):
        kind, sub = ("nu", "templates") if i % 2 == 0 else ("toml", "config")
        path = folder / sub / f"part-{i // 20:02d}" / f"file-{i:04d}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        length = rng.randint(text_bytes // SMALL_FILES // 2, text_bytes // SMALL_FILES * 3 // 2)
        path.write_text(_text(rng, length))
    rest = size - len(pack(folder))
    if rest > 0:
        (folder / "data").mkdir()
        for i in range(DATA_FILES):
            share = rest // DATA_FILES + (rest % DATA_FILES if i == 0 else 0)
            (folder / "data" / f"blob-{i}.bin").write_bytes(rng.randbytes(share))
    return folder


def _text(rng: random.Random, length: int) -> str:
    words = _VOCABULARY.split()
    lines: list[str] = []
    total = 0
    while total < length:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" {rng.randint(0, 99_999)}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines)


def _measure_tree(source: Path, work: Path, runs: int, limits: UnpackLimits) -> dict[str, Any]:
    """`source` packed once, then `runs` rounds of its unpack, its tree digest and the sha256 floor."""
    work.mkdir()
    archive = work / "archive.tar.gz"
    archive.write_bytes(pack(source))
    expected = tree_digest(source)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    contents = b"".join(p.read_bytes() for p in files)  # the floor's bytes: the files', back to back
    count = 0

    def unpack_once() -> None:
        nonlocal count
        count += 1
        unpack(archive, work / f"tree-{count}", limits)

    def digest_once() -> None:
        found = tree_digest(work / f"tree-{count}")
        if found != expected:
            raise RuntimeError(f"the unpacked tree of {source} is {found}, the folder packed {expected}")

    def floor() -> None:
        hashlib.sha256(contents).digest()

    steps: dict[str, Callable[[], None]] = {"unpack": unpack_once, "tree_digest": digest_once, "sha256": floor}
    times: dict[str, list[int]] = {step: [] for step in STEPS}
    for run in range(runs + 1):  # the first round warms up and is not counted
        # The digest needs the tree of this round's unpack: only the floor moves around them.
        order = ("sha256", "unpack", "tree_digest") if run % 2 else ("unpack", "tree_digest", "sha256")
        for step in order:
            began = time.perf_counter_ns()
            steps[step]()
            elapsed = time.perf_counter_ns() - began
            if run:
                times[step].append(elapsed)
        shutil.rmtree(work / f"tree-{count}")
    out: dict[str, Any] = {
        "files": len(files),
        "archive_bytes": archive.stat().st_size,
        "unpacked_bytes": len(contents),
        "runs": runs,
    }
    for step in STEPS:
        figures = summary_ms(times[step])
        p50_s = figures["p50_ms"] / 1000
        out[step] = {**figures, "mb_per_s": round(len(contents) / 1e6 / p50_s, 1) if p50_s else 0.0}
    floor_ms = out["sha256"]["p50_ms"]
    out["tree_digest_to_sha256"] = round(out["tree_digest"]["p50_ms"] / floor_ms, 2) if floor_ms else 0.0
    unpack_ms = out["unpack"]["p50_ms"]
    out["tree_digest_to_unpack"] = round(out["tree_digest"]["p50_ms"] / unpack_ms, 2) if unpack_ms else 0.0
    return out


def render(result: dict[str, Any]) -> str:
    large, small = result["large"], result["small"]

    def rows(label: str, tree: dict[str, Any]) -> list[str]:
        return [
            f"| {label} | {name} | {tree[key]['p50_ms']:.3f} | {tree[key]['p90_ms']:.3f} | "
            f"{tree[key]['mb_per_s']:,.0f} |"
            for name, key in [
                ("`unpack`", "unpack"),
                ("`tree_digest` of the unpacked tree", "tree_digest"),
                ("bare sha256 of the same bytes (the floor)", "sha256"),
            ]
        ]

    return "\n".join(
        [
            f"Tree check: the tree digest a cold load of a registry version computes, on a generated folder "
            f"({large['files']} files, {large['unpacked_bytes'] / 1e6:.1f} MB, its archive "
            f"{large['archive_bytes'] / 1e6:.1f} MB; {large['runs']} rounds) and on `{small['example']}` "
            f"({small['files']} files, {small['unpacked_bytes']:,} bytes, its archive {small['archive_bytes']:,} "
            f"bytes; {small['runs']} rounds), unpacked under {result['folder']} ({result['filesystem'] or '?'}):",
            "",
            "| tree | step | p50 ms | p90 ms | MB/s at p50 |",
            "|---|---|---|---|---|",
            *rows("large", large),
            *rows("small", small),
            "",
            f"`tree_digest` over the bare sha256: {large['tree_digest_to_sha256']:.2f}x (large), "
            f"{small['tree_digest_to_sha256']:.2f}x (small); over the unpack: {large['tree_digest_to_unpack']:.2f}x "
            f"(large), {small['tree_digest_to_unpack']:.2f}x (small).",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.tree_check", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery, measures nothing")
    p.add_argument("--size", type=int, help=f"the large archive's bytes, about (default {SIZE:,})")
    p.add_argument("--runs", type=int, help=f"rounds of the large tree (default {RUNS})")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    size = args.size or (QUICK_SIZE if args.quick else SIZE)
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    with tempfile.TemporaryDirectory(prefix="extension-loader-bench-tree-check-") as tmp:
        result = measure(Path(tmp), size=size, runs=runs)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
