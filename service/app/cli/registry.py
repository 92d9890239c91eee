"""The registry subcommands: `keygen`, `publish`, `yank`, `search`, `refresh` and `resign` (what they do is
`app/publishing.py`'s, `app/signing_states.py`'s and `app/resigning.py`'s).

Exit codes: 0 done; 1 refused (the folder does not load, the version is already published, no such version, a
record whose signed state this publisher does not trust); 2 a bad key file, key or configuration; 4 NATS or the
registry cannot be reached (its buckets not made yet by `extension-loader setup`, say), or refuses this user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats

from ...contract.config import Config, load_config
from ...contract.errors import ConfigError
from ...contract.messages import ExtensionType
from ...registry.buckets import RegistryBuckets
from ...registry.errors import RegistryUnavailable
from ...registry.names import BucketNames
from ...registry.signing import SigningKeyError, public_key_bytes, read_seed, write_seed
from ...runtime.runner import NushellMissing
from ..publishing import PublishRefused, prepare, publish, search, yank
from ..resigning import resign
from ..signing_states import refresh
from .calls import CaFileError, Forbidden, connect, let_go, unless_forbidden
from .printing import counted, table


def run_keygen(args: argparse.Namespace) -> int:
    try:
        public = write_seed(Path(args.file))
    except (SigningKeyError, OSError) as exc:
        print(f"error: {args.file}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    print(public)
    print(
        f"wrote the release key (seed) to {args.file}, readable by you only: keep it secret, publish with\n"
        f"  extension-loader publish DIR --key {args.file}\n"
        "and let loaders (and other publishers of the same extensions) trust it in their configuration:\n"
        f'  [[registry.trusted]]\n  key = "{public}"',
        file=sys.stderr,
    )
    return 0


def run_registry(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, environ=os.environ, overrides=args.set)
        return anyio.run(_guarded, args, config)
    except (ConfigError, SigningKeyError, CaFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NushellMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PublishRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Forbidden as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except (RegistryUnavailable, OSError, nats.errors.Error) as exc:
        print(f"error: {args.server}: {exc}", file=sys.stderr)
        return 4


async def _guarded(args: argparse.Namespace, config: Config) -> int:
    """`_main`, ended at once when the server refuses this user a step of it (only `publisher` may write the
    registry): JetStream would otherwise leave the refused request unanswered until the time-out."""
    code: int = await unless_forbidden(_main(args, config), args, registry=True)
    return code


async def _main(args: argparse.Namespace, config: Config) -> int:
    if args.action == "publish":
        signer = read_seed(Path(args.key))  # before any work: a bad key is found at once
        prepared = await prepare(Path(args.folder), signer, config)
        async with registry_buckets(args, config) as buckets:
            await buckets.open()  # `extension-loader setup` makes them; a publisher only writes
            for problem in await buckets.problems():
                print(f"warning: registry: {problem}", file=sys.stderr)
            outcome = await publish(buckets, prepared)
        _warn(outcome.warnings)
        r = outcome.release
        _print(
            args,
            {"key": outcome.key, "revision": outcome.revision, **msgspec.to_builtins(r)},
            f"published {prepared.extension_type.value} {prepared.name} {r.version}: {r.size} bytes, {r.digest}, "
            f"signed by {r.signer}",
        )
        return 0
    if args.action == "yank":
        signer = read_seed(Path(args.key))
        async with registry_buckets(args, config) as buckets:
            await buckets.open(archives=False)  # a yank changes the index only
            outcome = await yank(
                buckets,
                ExtensionType.parse(args.type),
                args.name,
                args.ext_version,
                signer=signer,
                trusted=config.registry.trusted,
                undo=args.undo,
            )
        _warn(outcome.warnings)
        what = "restored" if args.undo else "yanked"
        _print(
            args,
            {"key": outcome.key, "revision": outcome.revision, **msgspec.to_builtins(outcome.release)},
            f"{what} {args.type} {args.name} {args.ext_version}",
        )
        return 0
    if args.action == "refresh":
        signer = read_seed(Path(args.key))
        async with registry_buckets(args, config) as buckets:
            await buckets.open(archives=False)
            refreshed = await refresh(buckets, signer, config.registry.trusted, args.expires_in)
        _warn(f"left out of the timestamp: {why}" for why in refreshed.left_out)
        stamp = refreshed.timestamp
        _print(
            args,
            {"revision": refreshed.revision, "left_out": list(refreshed.left_out), **msgspec.to_builtins(stamp)},
            f"signed a timestamp of {counted(len(stamp.sequences), 'extension')}, valid until "
            f"{stamp.expires_at:%Y-%m-%d %H:%M:%S} UTC, signed by {signer.public_key}",
        )
        return 0
    if args.action == "resign":
        signer = read_seed(Path(args.key))
        for key in args.from_keys:
            public_key_bytes(key, user_keys=True)  # SigningKeyError (exit 2) for a key mistyped
        async with registry_buckets(args, config) as buckets:
            await buckets.open()  # each archive is read again
            done = await resign(buckets, signer, args.from_keys, config)
        for record in done:
            _warn(f"{record.key}: left out: {why}" for why in record.left_out)
        written = [r for r in done if r.revision is not None]
        lines = [f"re-signed {r.key}: {', '.join(r.versions)}" for r in written]
        _print(
            args,
            {"records": [msgspec.to_builtins(r) for r in done], "signer": signer.public_key},
            "\n".join(lines)
            if lines
            else "nothing to re-sign: no release of the old format, nor one a retired key signed, verifies with --from",
        )
        return 0
    async with registry_buckets(args, config) as buckets:
        await buckets.open(archives=False)  # the index is all a search reads, and all most users may read
        found = await search(buckets, args.words)
    if args.json:
        out = [
            {
                "extension_type": f.record.extension_type.value,
                "name": f.record.name,
                "latest": f.latest.version if f.latest else None,
                "versions": sorted(f.record.releases),
                "description": f.latest.description if f.latest else "",
            }
            for f in found
        ]
        print(json.dumps(out, indent=2))
    elif not found:
        print("nothing in the registry matches " + " ".join(args.words))
    else:
        rows = [
            (
                f.record.extension_type.value,
                f.record.name,
                f.latest.version if f.latest else "-",
                str(len(f.record.releases)),
                f.latest.description if f.latest else "(every version yanked)",
            )
            for f in found
        ]
        print(table(("TYPE", "NAME", "LATEST", "VERSIONS", "DESCRIPTION"), rows))
    return 0


def _warn(warnings: Iterable[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _print(args: argparse.Namespace, data: dict[str, Any], line: str) -> None:
    print(json.dumps(data, indent=2) if args.json else line)


@asynccontextmanager
async def registry_buckets(args: argparse.Namespace, config: Config) -> AsyncIterator[RegistryBuckets]:
    """A connection as the person asked, and the registry's buckets on it."""
    names = BucketNames(index=config.registry.index_bucket, archives=config.registry.archive_bucket)
    nc = await connect(args)
    try:
        yield RegistryBuckets(nc, names, timeout_s=config.registry.timeout_s, api_prefix=config.registry.api_prefix)
    finally:
        await let_go(nc)
