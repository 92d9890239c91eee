"""`extension-loader setup`: the events stream and the registry's buckets made or brought to their settings
(`app/setup.py`), one line each, as a person (or `dev`) runs it. With `--site`, at an edge site: the events
stream, and mirrors of the hub's buckets in their place (`--hub-domain`: the hub's JetStream domain).

Exit codes: 0 done (each created, updated or unchanged); 1 refused (a change that would lose data without
`--force`, or one the server refused); 2 a bad configuration; 4 NATS cannot be reached, or refuses this user.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import nats

from ...contract.config import Config, inbox_prefix_for, load_config
from ...contract.errors import ConfigError
from ..setup import Outcome, SetupUnreachable, Status, set_up
from ..stream_settings import site_targets, targets
from .calls import CaFileError, Forbidden, connect, let_go, unless_forbidden

ADMIN = "admin"  # the user that may manage streams (nats.conf)


def run_setup(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, environ=os.environ, overrides=args.set)
        outcomes = anyio.run(_guarded, args, config)
    except (ConfigError, CaFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Forbidden as exc:
        print(f"error: {exc}\nhint: setup needs a user that may manage streams (admin)", file=sys.stderr)
        return 4
    except SetupUnreachable as exc:
        print(f"error: {args.server}: {exc}", file=sys.stderr)
        return 4
    except (OSError, nats.errors.Error) as exc:
        print(f"error: {args.server}: {exc}", file=sys.stderr)
        return 4
    return report(outcomes)


async def _guarded(args: argparse.Namespace, config: Config) -> list[Outcome]:
    """Ended at once when the server refuses this user a stream's API (only `admin` may manage streams)."""
    chosen = site_targets(config, args.hub_domain) if args.site else targets(config)
    nc = await connect(args)
    try:
        found: list[Outcome] = await unless_forbidden(
            set_up(nc, chosen, replicas=args.replicas, force=args.force), args
        )
        return found
    finally:
        await let_go(nc)


def report(outcomes: Sequence[Outcome], *, lead: str = "") -> int:
    """One line per stream on standard output; 1 when one was refused, else 0."""
    for outcome in outcomes:
        print(f"{lead}{outcome.line}", flush=True)
    refused = [o for o in outcomes if o.status is Status.REFUSED]
    if refused:
        print(f"{lead}refused {len(refused)} of {len(outcomes)}: left as they were", file=sys.stderr)
        return 1
    return 0


async def _ignore(exc: Exception) -> None:
    pass


def _admin_options(config: Config, password: str) -> dict[str, Any]:
    nats_cfg = msgspec.structs.replace(
        config.nats, user=ADMIN, password=password, token="", creds="", inbox_prefix=inbox_prefix_for(ADMIN)
    )
    options: dict[str, Any] = {
        **nats_cfg.credentials(),
        "name": "extension-loader-setup",
        "connect_timeout": 5,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "error_cb": _ignore,  # what fails is raised and said once, below
    }
    return options


EVENTS_IMPORT = "$JS.events.API"  # where nats.conf's account layout lets admin reach the event log


def has_account_layout(config: Config, password: str) -> bool:
    """Whether the server `dev` started has nats.conf's accounts: admin reaches the event log through an import
    (any answer there, even "no such stream"), rather than nobody answering under that prefix."""

    async def probe() -> bool:
        nc = await nats.connect(**_admin_options(config, password))
        try:
            await nc.request(f"{EVENTS_IMPORT}.STREAM.INFO.{config.events.stream}", b"", timeout=5)
        except nats.errors.NoRespondersError:
            return False
        finally:
            await nc.drain()
        return True

    try:
        return anyio.run(probe)
    except (OSError, nats.errors.Error):
        return False  # setup, next, says what is wrong


def set_up_for_dev(config: Config, password: str) -> int:
    """What `extension-loader dev` runs before the service: setup as `admin` on the server it started, through
    the service's own server list and TLS settings. The exit code as `setup`'s."""
    options = _admin_options(config, password)

    async def run() -> list[Outcome]:
        nc = await nats.connect(**options)
        try:
            return await set_up(nc, targets(config))
        finally:
            await nc.drain()

    try:
        outcomes = anyio.run(run)
    except (SetupUnreachable, OSError, nats.errors.Error) as exc:
        print(f"extension-loader: setup as {ADMIN} failed: {exc}", file=sys.stderr)
        return 4
    return report(outcomes, lead="setup: ")
