"""durability: what `jetstream { sync_interval: always }` costs a write, beside nats-server's default.

The project's shipped JetStream configurations fsync every write before it is acknowledged (with the default,
a sync every two minutes, acknowledged writes were lost on power failure). Two JetStream nats-servers run side
by side (free loopback ports, file storage, each its store in a folder of its own under the run's folder, each
from a config file whose `jetstream` block differs only in `sync_interval: always`), both given the events
stream and the registry's buckets as `extension-loader setup` makes them; each server's setting is read back
from its `/varz` (`sync_always`). Then `rounds` rounds, the servers' order turning each round, one warm-up
round first (not counted); in each, on each server:

  kv_put         `puts` Key-Value puts of 200-byte values (an index record's size) into the index bucket, one
                 at a time: p50, p90, p99
  publish        `publishes` events (300 bytes, `Nats-Msg-Id` and `Content-Type` headers) into the events
                 stream, each `js.publish` awaited, as the service does with `events.jetstream = true`: the
                 total, and each publish's p50 and p99
  publish_async  the same number through `publish_async`, then every acknowledgement awaited: the total

and, after both servers, what the disk itself asks: `puts` appends of 200 bytes to a file in the store's
folder, each followed by `fsync` (`bare_fsync`: p50, p99), since what `always` adds is about one of those.
Each figure is the median of its rounds, and `ratio` is always / default. Each measurement stops at `LIMIT_S`
(its `n` then says how many were made; totals compare as time per message). The store's filesystem is recorded
beside them: on tmpfs an fsync costs nothing, and a disk with a write cache that survives power loss (or a
virtual one that ignores flushes) answers one in well under a millisecond.

`python -m bench.durability [--quick]` runs it alone; `make bench` runs it on servers of its own. Timings are
reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.app.natsserver import NatsServer

from .durability_writes import EVENT_BYTES, LIMIT_S, VALUE_BYTES, Writer, bare_fsync, connect, filesystem

ROUNDS = 5
PUTS = 300
PUBLISHES = 300
QUICK_ROUNDS = 3  # `--quick`: checks the machinery, measures nothing
QUICK_WRITES = 20
SERVERS = ("always", "default")
KINDS = ("kv_put", "publish", "publish_async")


def _config(store: Path, always: bool) -> str:
    lines = ["jetstream {", f"  store_dir: {json.dumps(str(store))}"]
    if always:
        lines.append("  sync_interval: always")
    return "\n".join([*lines, "}", ""])


def _setting(server: NatsServer) -> dict[str, Any]:
    """What the server says of its own syncing (`/varz`; `sync_always` is left out when false)."""
    config = server.monitor("varz").get("jetstream", {}).get("config", {})
    return {
        "sync_always": bool(config.get("sync_always", False)),
        "sync_interval_s": config.get("sync_interval", 0) / 1e9,
        "store_dir": config.get("store_dir", ""),
    }


async def measure(
    always: NatsServer, default: NatsServer, *, rounds: int = ROUNDS, puts: int = PUTS, publishes: int = PUBLISHES
) -> dict[str, Any]:
    """The three measurements on both servers, `rounds` times (one warm-up round before, not counted)."""
    if rounds <= 0 or puts <= 0 or publishes <= 0:
        raise ValueError("the rounds and the counts are positive")
    servers = {"always": always, "default": default}
    settings = {name: await asyncio.to_thread(_setting, s) for name, s in servers.items()}
    if not settings["always"]["sync_always"] or settings["default"]["sync_always"]:
        raise RuntimeError(f"the servers do not sync as configured: {settings}")
    conns: dict[str, Writer] = {}
    per_round: dict[str, dict[str, list[dict[str, Any]]]] = {s: {k: [] for k in KINDS} for s in SERVERS}
    fsyncs: list[dict[str, Any]] = []
    folder = Path(settings["always"]["store_dir"]).parent  # the configured folder; the server's is its jetstream/
    order: list[list[str]] = []
    try:
        for name, server in servers.items():
            conns[name] = await connect(server, name)
        for run in range(rounds + 1):  # the first round warms up and is not counted
            turn = list(SERVERS) if run % 2 else list(reversed(SERVERS))
            for name in turn:
                target = conns[name]
                figures = {
                    "kv_put": await target.kv_put(puts if run else 10),
                    "publish": await target.publish(publishes if run else 10),
                    "publish_async": await target.publish_async(publishes if run else 10),
                }
                if run:
                    for kind, figure in figures.items():
                        per_round[name][kind].append(figure)
            if run:
                order.append(turn)
                fsyncs.append(await bare_fsync(folder, puts))
    finally:
        for target in conns.values():
            await target.nc.close()
    out: dict[str, Any] = {
        "rounds": rounds,
        "puts": puts,
        "publishes": publishes,
        "value_bytes": VALUE_BYTES,
        "event_bytes": EVENT_BYTES,
        "limit_s": LIMIT_S,
        "order": order,
        "servers": settings,
        "filesystem": {name: await asyncio.to_thread(filesystem, Path(s["store_dir"])) for name, s in settings.items()},
    }
    for name in SERVERS:
        out[name] = {kind: _medians(per_round[name][kind]) for kind in KINDS}
    out["bare_fsync"] = _medians(fsyncs)
    out["ratio"] = _ratios(out["always"], out["default"])
    return out


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (a total as time per message too), and the rounds themselves."""
    out: dict[str, Any] = {"rounds": rounds}
    for key in rounds[0]:
        out[key] = round(statistics.median(r[key] for r in rounds), 3)
    out["per_message_ms"] = round(statistics.median(r["total_ms"] / r["n"] for r in rounds), 4)
    return out


def _ratios(always: dict[str, Any], default: dict[str, Any]) -> dict[str, float]:
    pairs = {
        "kv_put_p50": ("kv_put", "p50_ms"),
        "kv_put_p90": ("kv_put", "p90_ms"),
        "kv_put_p99": ("kv_put", "p99_ms"),
        "publish_total": ("publish", "per_message_ms"),
        "publish_p50": ("publish", "p50_ms"),
        "publish_p99": ("publish", "p99_ms"),
        "publish_async_total": ("publish_async", "per_message_ms"),
    }
    return {
        name: round(always[kind][key] / default[kind][key], 2) if default[kind][key] else 0.0
        for name, (kind, key) in pairs.items()
    }


async def on_own_servers(work: Path, *, rounds: int = ROUNDS, puts: int = PUTS, publishes: int = PUBLISHES) -> Any:
    """`measure` on two JetStream nats-servers of its own, their stores and config files under `work`."""
    servers = []
    try:
        for name in SERVERS:
            folder = work / f"durability-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "nats.conf"
            conf.write_text(_config(folder / "store", always=name == "always"))
            server = NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
            servers.append(server)
            await asyncio.to_thread(server.start)
        return await measure(servers[0], servers[1], rounds=rounds, puts=puts, publishes=publishes)
    finally:
        for server in servers:
            server.stop()


def render(result: dict[str, Any]) -> str:
    always, default, ratio = result["always"], result["default"], result["ratio"]
    puts, publishes = result["puts"], result["publishes"]

    def row(label: str, kind: str, key: str, name: str) -> str:
        return f"| {label} | {always[kind][key]:.2f} | {default[kind][key]:.2f} | {ratio[name]:.2f}x |"

    settings, fs, fsync = result["servers"], result["filesystem"], result["bare_fsync"]
    short = [
        f"{name}: n {r['n']} of {puts if kind == 'kv_put' else publishes}"
        for name in SERVERS
        for kind in KINDS
        for r in result[name][kind]["rounds"]
        if r["n"] < (puts if kind == "kv_put" else publishes)
    ]
    return "\n".join(
        [
            "**durability: sync_interval always vs default**: two JetStream servers side by side, file storage "
            f"({fs['always'] or '?'} / {fs['default'] or '?'}), one with `sync_interval: always` (its `/varz`: "
            f"sync_always {str(settings['always']['sync_always']).lower()}), one with the default (sync_always "
            f"{str(settings['default']['sync_always']).lower()}, a sync every "
            f"{settings['default']['sync_interval_s']:g} s); medians of {result['rounds']} rounds, the order "
            "turning each round; ms. A reported figure, not a target.",
            "",
            "| figure | always | default | always / default |",
            "|---|---|---|---|",
            row(f"Key-Value put ({result['value_bytes']} B) p50, {puts} puts", "kv_put", "p50_ms", "kv_put_p50"),
            row("Key-Value put p90", "kv_put", "p90_ms", "kv_put_p90"),
            row("Key-Value put p99", "kv_put", "p99_ms", "kv_put_p99"),
            row(f"{publishes} `js.publish` each awaited, total", "publish", "total_ms", "publish_total"),
            row("one `js.publish` p50", "publish", "p50_ms", "publish_p50"),
            row("one `js.publish` p99", "publish", "p99_ms", "publish_p99"),
            row(
                f"{publishes} `publish_async` + every ack, total",
                "publish_async",
                "total_ms",
                "publish_async_total",
            ),
            "",
            f"A bare append of {result['value_bytes']} B and `fsync` on the same filesystem, {puts} in a row: p50 "
            f"{fsync['p50_ms']:.3f} ms, p99 {fsync['p99_ms']:.3f} ms. Each round, always / default: Key-Value put "
            f"p50 {_each(always, default, 'kv_put', 'p50_ms')}; {publishes} `js.publish` "
            f"{_each(always, default, 'publish', 'total_ms')}; {publishes} `publish_async` "
            f"{_each(always, default, 'publish_async', 'total_ms')}.",
            *(["", f"Cut short at {result['limit_s']:g} s: " + "; ".join(short) + "."] if short else []),
        ]
    )


def _each(always: dict[str, Any], default: dict[str, Any], kind: str, key: str) -> str:
    pairs = zip(always[kind]["rounds"], default[kind]["rounds"], strict=True)
    return ", ".join(f"{a[key]:.2f} / {d[key]:.2f}" for a, d in pairs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.durability", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROUNDS} rounds of {QUICK_WRITES}: checks the machinery, measures nothing",
    )
    p.add_argument("--rounds", type=int, help=f"rounds (default {ROUNDS})")
    p.add_argument("--puts", type=int, help=f"Key-Value puts a round (default {PUTS})")
    p.add_argument("--publishes", type=int, help=f"publishes of each kind a round (default {PUBLISHES})")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    small = QUICK_WRITES if args.quick else None
    with tempfile.TemporaryDirectory(prefix="extension-loader-bench-durability-") as tmp:
        result = asyncio.run(
            on_own_servers(
                Path(tmp),
                rounds=args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS),
                puts=args.puts or small or PUTS,
                publishes=args.publishes or small or PUBLISHES,
            )
        )
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
