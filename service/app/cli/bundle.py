"""The `bundle` subcommands: `bundle export FILE [--since SEQUENCE|TIME] [TYPE NAME ...]` writes the registry's
signed records and their archives into one file; `bundle import FILE` verifies it with the site's pinned keys and
writes it into the site's registry (`app/bundle_export.py`, `app/bundle_verify.py`, `app/bundle_import.py`; the
file: `app/bundles.py`).

Exit codes: 0 done (for an import, "unchanged" included); 1 refused (something not trusted or not the bytes signed,
a rollback, an extension named that the registry does not have, a record that changed at the site meanwhile);
2 a bad file (not a bundle, unreadable, unwritable), argument or configuration; 4 NATS or the registry cannot be
reached, or refuses this user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import nats

from ...contract.config import Config, load_config
from ...contract.errors import ConfigError
from ...contract.messages import ExtensionType
from ...core.fetching import unpack_limits
from ...core.trust import Trust
from ...registry.errors import RegistryUnavailable
from ..bundle_export import Since, export
from ..bundle_import import import_bundle
from ..bundle_verify import check
from ..bundles import BundleInvalid, BundleRefused, read
from .calls import CaFileError, Forbidden, unless_forbidden
from .printing import counted
from .registry import registry_buckets


def add_bundle_command(
    sub: argparse._SubParsersAction[Any], connection_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """`bundle export` and `bundle import`, among the subcommands of `sub`."""
    b = sub.add_parser("bundle", help="carry the registry to a site that cannot reach it: export, then import there")
    actions = b.add_subparsers(dest="bundle_action", required=True, metavar="ACTION", parser_class=_Action)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = actions.add_parser(name, help=help)
        connection_options(a)
        a.add_argument("--config", "-c", metavar="FILE", help="TOML file over the packaged defaults ([registry])")
        a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
        a.add_argument("--json", action="store_true", help="print the outcome as JSON")
        a.add_argument("file", metavar="FILE", help="the bundle")
        a.set_defaults(run=run_bundle, action=name)
        return a

    e = action("export", "write the registry's signed records and their archives into FILE (as any loader may read)")
    e.add_argument(
        "--since",
        type=_since,
        metavar="SEQUENCE|TIME",
        help="only extensions whose signed state's sequence is greater than SEQUENCE, or that was signed after TIME "
        "(ISO 8601, e.g. 2026-01-31T12:00:00Z; UTC unless it says otherwise)",
    )
    e.add_argument("extensions", nargs="*", metavar="TYPE NAME", help="only these extensions (pairs)")
    action("import", "verify FILE with this site's pinned keys ([[registry.trusted]]), then write it (as publisher)")


class _Action(argparse.ArgumentParser):
    """An action's parser: TYPE NAME pairs may follow options too (argparse takes positional words only up to the
    first option: `export FILE --since 3 taskserv vault`); anything else it does not know is its usage error."""

    def parse_known_args(  # type: ignore[override]  # typeshed overloads it on the namespace type
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        if hasattr(parsed, "extensions"):
            parsed.extensions = [*parsed.extensions, *(word for word in rest if not word.startswith("-"))]
            rest = [word for word in rest if word.startswith("-")]
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return parsed, rest


def run_bundle(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, environ=os.environ, overrides=args.set)
        only = _pairs(getattr(args, "extensions", []))
        return anyio.run(_guarded, args, config, only)
    except (ConfigError, CaFileError, BundleInvalid, _BadArguments) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BundleRefused as exc:
        lines = str(exc).splitlines()
        print(
            f"error: {args.file}: refused, nothing written:",
            *(f"  {line}" for line in lines),
            sep="\n",
            file=sys.stderr,
        )
        return 1
    except Forbidden as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except (RegistryUnavailable, OSError, nats.errors.Error) as exc:
        print(f"error: {args.server}: {exc}", file=sys.stderr)
        return 4


class _BadArguments(Exception):
    pass


def _pairs(words: list[str]) -> list[tuple[ExtensionType, str]]:
    if len(words) % 2:
        raise _BadArguments(f"extensions are named in pairs, TYPE NAME: {' '.join(words)}")
    pairs = []
    for kind, name in zip(words[::2], words[1::2], strict=True):
        try:
            pairs.append((ExtensionType.parse(kind), name))
        except ValueError:
            raise _BadArguments(f"{kind!r} is not an extension type (provider, taskserv or cluster)") from None
    return pairs


def _since(text: str) -> Since:
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a sequence number nor an ISO 8601 time (2026-01-31T12:00:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def _guarded(args: argparse.Namespace, config: Config, only: list[tuple[ExtensionType, str]]) -> int:
    """`_main`, ended at once when the server refuses this user a step of it (an export needs what a loader may
    read, an import what `publisher` may write)."""
    code: int = await unless_forbidden(_main(args, config, only), args, registry=True)
    return code


async def _main(args: argparse.Namespace, config: Config, only: list[tuple[ExtensionType, str]]) -> int:
    limits = unpack_limits(config.registry)
    if args.action == "export":
        async with registry_buckets(args, config) as buckets:
            await buckets.open()
            exported = await export(
                buckets, Path(args.file), since=args.since, only=only, max_archive_bytes=limits.max_archive_bytes
            )
        for why in exported.left_out:
            print(f"warning: left out: {why}", file=sys.stderr)
        if args.json:
            print(json.dumps(msgspec.to_builtins({**_fields(exported), "path": str(exported.path)}), indent=2))
        else:
            stamp = " and the signed timestamp" if exported.timestamp else ""
            print(
                f"exported {counted(len(exported.records), 'extension')} "
                f"({counted(len(exported.archives), 'archive')}){stamp}: "
                f"{exported.size} bytes"
            )
            print(f"{exported.sha256.removeprefix('sha256:')}  {args.file}")
        return 0
    if not config.registry.trusted:
        raise _BadArguments(
            "this site's configuration pins no key ([[registry.trusted]] in --config FILE): nothing in a bundle "
            "can be trusted"
        )
    trust = Trust(config.registry.trusted, accept_v1=config.registry.accept_v1)
    with tempfile.TemporaryDirectory(prefix="extension-bundle-") as scratch:
        bundle = await anyio.to_thread.run_sync(read, Path(args.file), Path(scratch), limits.max_archive_bytes)
        checked = check(bundle, trust)  # before any connection: a bundle refused here needs no NATS
        async with registry_buckets(args, config) as buckets:
            await buckets.open()
            imported = await import_bundle(buckets, checked, trust)
    for warning in imported.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    kept = [r for r in imported.records if r.status == "kept"]
    if args.json:
        out = {**_fields(imported), "sha256": bundle.sha256, "unchanged": imported.unchanged}
        print(json.dumps(msgspec.to_builtins(out), indent=2))
    else:
        print(f"{args.file}: {bundle.sha256}")
        for r in imported.records:
            was = f"{r.previous} -> " if r.previous is not None and r.previous != r.sequence else ""
            print(f"{r.status} {r.extension_type.value} {r.name} (sequence {was}{r.sequence})")
        print(f"archives: {imported.archives_written} written, {imported.archives_present} already there")
        print(f"timestamp: {imported.timestamp}")
        if imported.unchanged:
            print("unchanged: the site holds everything in the bundle already")
    return 1 if kept else 0


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__dataclass_fields__}
