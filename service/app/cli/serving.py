"""`extension-loader serve` and `extension-loader dev`: configuration in, the service run until a signal, an
exit code out. `dev` first starts nats-server with nats.conf and development passwords, and runs `setup` on it
as `admin` (the service itself creates no stream)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import msgspec

from ...contract.config import Config, load_config
from ...contract.errors import ConfigError, LoaderError
from ...runtime.runner import NushellMissing, SandboxMissing
from ...wire.events import EventStreamError
from ...wire.service import ConnectRefused
from ..natsserver import NatsServer, nats_server_binary
from ..serve import serve, service_version
from ..telemetry import setup_logging, setup_telemetry
from .setup import EVENTS_IMPORT, has_account_layout, set_up_for_dev


def _config(args: argparse.Namespace, layer: Mapping[str, object] | None = None) -> Config:
    overrides = list(args.set)
    if args.nats_url:
        overrides.append(f'nats.url="{args.nats_url}"')
    return load_config(args.config, environ=os.environ, overrides=overrides, layer=layer)


def _start(args: argparse.Namespace) -> Config | None:
    setup_logging(args.log_level, json_lines=not sys.stderr.isatty())
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"extension-loader: {exc}", file=sys.stderr)
        return None
    return config


def run_serve(args: argparse.Namespace) -> int:
    config = _start(args)
    if config is None:
        return 2
    return _run_service(config)


def _run_service(config: Config, hint: str = "") -> int:
    def ready(_: object) -> None:
        if hint:
            print(hint, flush=True)

    telemetry = setup_telemetry(os.environ, version=service_version())
    try:
        anyio.run(lambda: serve(config, on_ready=ready))
    except ConfigError as exc:  # what only assembling the parts finds (a pinned key's checksum, say)
        print(f"extension-loader: {exc}", file=sys.stderr)
        return 2
    except (NushellMissing, SandboxMissing, EventStreamError, ConnectRefused, LoaderError) as exc:
        # LoaderError at start: the cache folder cannot be made, say.
        print(f"extension-loader: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"extension-loader: cannot reach NATS at {config.nats.url}: {exc}", file=sys.stderr)
        return 4
    finally:
        telemetry.shutdown()
    return 0


# DEVELOPMENT ONLY: the passwords `extension-loader dev` gives nats-server (nats.conf reads the users' passwords
# from these variables, and nats-server does not start while one is unset) for each variable that is unset.
DEV_PASSWORDS = {
    "NATS_ORCHESTRATOR_PASSWORD": "dev-orchestrator-not-secret",
    "NATS_LOADER_PASSWORD": "dev-loader-not-secret",
    "NATS_OBSERVER_PASSWORD": "dev-observer-not-secret",
    "NATS_PUBLISHER_PASSWORD": "dev-publisher-not-secret",
    "NATS_ADMIN_PASSWORD": "dev-admin-not-secret",
}
DEV_USER = "loader"  # the nats.conf user the service connects as, unless the configuration names credentials
# Where nats.conf's accounts let each of these reach the JetStream APIs (README.md, Security): the loader, in
# LIVE, imports the registry's read API as $JS.reg.API and the event log's as $JS.events.API, and publishes its
# events plainly (EVENTS captures them; it checks at start that the log is there); admin, in REG, has the
# registry's own API and the log's through its import.
DEV_LOADER = {
    "registry.api_prefix": "$JS.reg.API",
    "events.api_prefix": EVENTS_IMPORT,
    "events.jetstream": False,
    "events.require_stream": True,
}
DEV_ADMIN = {"registry.api_prefix": "$JS.API", "events.api_prefix": EVENTS_IMPORT}


def run_dev(args: argparse.Namespace) -> int:
    config = _start(args)
    if config is None:
        return 2
    conf = Path(args.nats_config)
    if not conf.is_file():
        print(
            f"extension-loader: {conf} not found (run from the project folder or pass --nats-config)",
            file=sys.stderr,
        )
        return 2
    try:
        binary = nats_server_binary()
    except FileNotFoundError as exc:  # the `server` extra is not installed
        print(f"extension-loader: {exc}", file=sys.stderr)
        return 3
    # Only nats-server's environment gets the development passwords; the service's own stays as it is.
    server_env = dict(os.environ)
    unset = [name for name in DEV_PASSWORDS if not server_env.get(name)]
    server_env.update({name: DEV_PASSWORDS[name] for name in unset})
    if unset:
        print(
            f"extension-loader: WARNING: {', '.join(unset)} unset: nats-server runs with DEVELOPMENT passwords "
            "(for this machine only; README.md, Security)",
            file=sys.stderr,
            flush=True,
        )
    loader_password = server_env["NATS_LOADER_PASSWORD"]
    config = _as_loader(config, loader_password)
    url = config.nats.servers[0]
    try:
        server = NatsServer(["-c", str(conf)], binary=binary, env=server_env).start()
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"extension-loader: could not start nats-server: {exc}", file=sys.stderr)
        return 4
    hint = (
        f"\nextension-loader is serving on {url} as NATS user {config.nats.user or '(none)'} (NATS from {conf}). "
        f"Try, in another terminal:\n\n"
        f"  .venv/bin/extension-loader load taskserv kubernetes --version 1.28.0\n"
        f"  .venv/bin/extension-loader discover taskserv\n"
        f"  nats --inbox-prefix _INBOX.orchestrator request extensions.load "
        f'\'{{"extension_type":"taskserv","name":"kubernetes","version":"1.28.0"}}\'\n\n'
        f"No password needed on this machine: nats.conf lets a client without one in as `orchestrator`\n"
        f"(development only), whose replies arrive under _INBOX.orchestrator only. Ctrl-C stops the service\n"
        f"and nats-server.\n"
    )
    try:
        # The streams first, as admin: the service creates none, and stops when one it needs is missing.
        admin_password = server_env["NATS_ADMIN_PASSWORD"]
        admin = config
        if has_account_layout(config, admin_password):
            # The layout's settings under what the person gave (file, environment, --set), not over it.
            admin = _config(args, DEV_ADMIN)
            if config.nats.user == DEV_USER:
                config = _as_loader(_config(args, DEV_LOADER), loader_password)
        code = set_up_for_dev(admin, admin_password)
        return code if code != 0 else _run_service(config, hint)
    finally:
        server.stop()


def _as_loader(config: Config, password: str) -> Config:
    """The service logs in as nats.conf's `loader`, unless the configuration names credentials of its own."""
    nats_cfg = config.nats
    if nats_cfg.user or nats_cfg.token or nats_cfg.creds:
        return config
    return msgspec.structs.replace(config, nats=msgspec.structs.replace(nats_cfg, user=DEV_USER, password=password))
