"""Reading one registry archive out of the Object Store: `fetch_archive` against the floor and nats-py's own get.

One object (10 MB by default, in 512 KiB chunks) on a JetStream nats-server, read `runs` times by each of
three readers, interleaved (the order turns each run), after one warm-up each; medians:

  floor          a bare pull consumer that knows the object's chunks already: create it, one pull request for
                 every chunk, each chunk written to a file as it comes, delete it; no hashing, no checks
  fetch_archive  `ArchiveBucket.fetch` into a new file (metadata read, size checked, chunks pulled
                 in 8 MiB windows, hashed as they come), and its digest compared with the expected one;
                 beside it, what sha256 over the same bytes takes alone
  objectstore    nats-py's `ObjectStore.get(writeinto=file)`, for reference (what the registry does not use)

reported in MB/s (10^6 bytes a second), with each reader's median time over the floor's: 1.00 is the floor.

`python -m bench.registry_fetch [--size BYTES] [--runs N]` starts a server of its own; `make bench` runs it
after the phases on its shared server, also on a server of its own (those run without JetStream). Timings are
reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import api

from service.app.natsserver import NatsServer
from service.app.setup import set_up
from service.app.stream_settings import registry_targets
from service.registry.archive_bucket import CHUNK_SIZE
from service.registry.buckets import RegistryBuckets
from service.registry.names import DEFAULT_NAMES

SIZE = 10_000_000
RUNS = 11
READERS = ("floor", "fetch_archive", "objectstore")


async def measure(url: str, work: Path, *, size: int = SIZE, runs: int = RUNS) -> dict[str, Any]:
    """Puts one object of `size` random bytes on the JetStream server at `url`, then times the three readers,
    writing into files under `work`."""
    if size <= 0 or runs <= 0:
        raise ValueError("the size and the number of runs are positive")
    nc = await nats.connect(url, name="bench-registry", allow_reconnect=False)
    try:
        await set_up(nc, registry_targets(DEFAULT_NAMES))  # as `extension-loader setup`
        buckets = RegistryBuckets(nc, timeout_s=30.0)
        await buckets.open()
        data = random.Random(size).randbytes(size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        name = "sha256/" + digest.removeprefix("sha256:")
        began = time.perf_counter()
        await buckets.archives.put(name, data)
        put_s = time.perf_counter() - began
        obs = await nc.jetstream().object_store(buckets.names.archives)
        info = await obs.get_info(name)
        into = work / "registry-archive"

        async def floor() -> None:
            await _bare_pull(nc, buckets.names.archives, info.nuid, info.chunks or 0, into)

        async def fetch() -> None:
            got = await buckets.archives.fetch(name, into, max_bytes=size)
            if got != digest:
                raise RuntimeError(f"fetch_archive returned {got}, not {digest}")

        async def objectstore() -> None:
            with into.open("wb") as sink:
                await obs.get(name, writeinto=sink)

        readers: dict[str, Callable[[], Awaitable[None]]] = {
            "floor": floor,
            "fetch_archive": fetch,
            "objectstore": objectstore,
        }
        times: dict[str, list[float]] = {reader: [] for reader in READERS}
        for run in range(runs + 1):  # the first run warms up and is not counted
            shift = run % len(READERS)
            for reader in READERS[shift:] + READERS[:shift]:
                into.unlink(missing_ok=True)
                began = time.perf_counter()
                await readers[reader]()
                elapsed = time.perf_counter() - began
                if into.stat().st_size != size:
                    raise RuntimeError(f"{reader} wrote {into.stat().st_size} bytes of {size}")
                if run:
                    times[reader].append(elapsed)
        into.unlink(missing_ok=True)
    finally:
        await nc.close()
    out: dict[str, Any] = {"size_bytes": size, "chunk_bytes": CHUNK_SIZE, "chunks": info.chunks, "runs": runs}
    out["put_s"] = round(put_s, 4)
    floor_s = statistics.median(times["floor"])
    for reader in READERS:
        median = statistics.median(times[reader])
        out[reader] = {
            "median_s": round(median, 4),
            "mb_per_s": round(size / 1e6 / median, 1),
            "runs_s": [round(t, 4) for t in times[reader]],
            "to_floor": round(median / floor_s, 2),
        }
    out["ratio_fetch_archive_to_floor"] = out["fetch_archive"]["to_floor"]
    out["sha256_ms"] = round(_hash_s(data) * 1000, 2)
    return out


def _hash_s(data: bytes) -> float:
    """The median time sha256 takes over `data` alone: most of what fetch_archive adds to the floor."""
    samples = []
    for _ in range(5):
        began = time.perf_counter()
        hashlib.sha256(data).digest()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


async def _bare_pull(nc: Client, bucket: str, nuid: str, chunks: int, into: Path) -> None:
    """The floor: one pull request for every chunk of the object, straight into the file."""
    stream = f"OBJ_{bucket}"
    js = nc.jetstream()
    consumer = f"bench-{secrets.token_hex(8)}"
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            name=consumer,
            filter_subject=f"$O.{bucket}.C.{nuid}",
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            inactive_threshold=30.0,
        ),
    )
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request = json.dumps({"batch": chunks, "no_wait": True}).encode()
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request, reply=inbox)
        with into.open("wb") as sink:
            for _ in range(chunks):
                sink.write((await sub.next_msg(timeout=30.0)).data)
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(stream, consumer)


async def on_own_server(work: Path, *, size: int = SIZE, runs: int = RUNS) -> dict[str, Any]:
    """`measure` on a JetStream nats-server of its own (free loopback port, its store in the folder `work`)."""
    with NatsServer(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(work / "registry-jetstream")]) as server:
        return await measure(server.url, work, size=size, runs=runs)


def render(result: dict[str, Any]) -> str:
    gap_ms = (result["fetch_archive"]["median_s"] - result["floor"]["median_s"]) * 1000
    rows = [
        f"| {label} | {result[key]['median_s'] * 1000:.1f} | {result[key]['mb_per_s']:,.0f} | "
        f"{result[key]['to_floor']:.2f} |"
        for label, key in [
            ("bare pull consumer into a file (the floor)", "floor"),
            ("`fetch_archive` + sha256 check", "fetch_archive"),
            ("nats-py `ObjectStore.get(writeinto=)`", "objectstore"),
        ]
    ]
    return "\n".join(
        [
            f"Registry archive fetch: one object of {result['size_bytes'] / 1e6:g} MB in {result['chunks']} chunks "
            f"of {result['chunk_bytes'] // 1024} KiB (put in {result['put_s']:.2f} s), median of {result['runs']} "
            "interleaved runs:",
            "",
            "| reader | ms | MB/s | time / floor |",
            "|---|---|---|---|",
            *rows,
            "",
            f"`fetch_archive` takes {gap_ms:.1f} ms more than the floor; sha256 over the "
            f"{result['size_bytes'] / 1e6:g} MB alone takes {result['sha256_ms']:.1f} ms.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.registry_fetch", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--size", type=int, default=SIZE, help=f"the object's bytes (default {SIZE:,})")
    p.add_argument("--runs", type=int, default=RUNS, help=f"runs of each reader (default {RUNS})")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="extension-loader-bench-registry-") as tmp:
        result = asyncio.run(on_own_server(Path(tmp), size=args.size, runs=args.runs))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
