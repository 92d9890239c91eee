"""The `extension-loader` command: the service (`serve`, `dev`) and a client for people (`load`, `list`, ...)."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
from nats.aio.client import Client

from .app import serve, service_version
from .client import LoaderClient, RemoteError
from .config import Config, load_config
from .errors import ConfigError, LoaderError
from .events import EventStreamError
from .natsserver import NatsServer, nats_server_binary
from .runner import NushellMissing, SandboxMissing
from .server import ConnectRefused, flush_subscriptions
from .telemetry import setup_logging, setup_telemetry

DEFAULT_URL = "nats://127.0.0.1:4222"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extension-loader",
        description="Loads infrastructure extensions through Nushell and serves them over NATS.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {service_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Subcommand)

    def server_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", metavar="FILE", help="TOML file over the packaged defaults")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
        sp.add_argument("--nats-url", metavar="URL", help="same as --set nats.url=URL")
        sp.add_argument("--log-level", default="INFO")

    s = sub.add_parser("serve", help="serve against a running NATS server")
    server_options(s)
    s.set_defaults(run=_serve)
    d = sub.add_parser("dev", help="start nats-server with nats.conf, then serve; Ctrl-C stops both")
    server_options(d)
    d.add_argument("--nats-config", default="nats.conf", metavar="FILE", help="(default: nats.conf)")
    d.set_defaults(run=_dev)

    def client(name: str, help: str, *, typed: str = "", versioned: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--server", "-s", default=os.environ.get("NATS_URL", DEFAULT_URL), metavar="URL")
        # The nats CLI's variables: NATS_USER, NATS_PASSWORD, NATS_CA. Without a user, nats.conf's no_auth_user.
        c.add_argument("--user", default=os.environ.get("NATS_USER") or None, help="(default: $NATS_USER)")
        c.add_argument("--password", default=os.environ.get("NATS_PASSWORD") or None, help="(default: $NATS_PASSWORD)")
        c.add_argument(
            "--tls-ca",
            default=os.environ.get("NATS_CA") or None,
            metavar="FILE",
            help="CA file that signed the server's certificate; turns TLS on (default: $NATS_CA)",
        )
        c.add_argument("--prefix", default="extensions", help="subject prefix (default: extensions)")
        c.add_argument("--timeout", type=float, default=40.0, help="seconds to wait for a reply")
        c.add_argument("--json", action="store_true", help="print the reply's data as JSON")
        if typed == "required":
            c.add_argument("type", help="provider, taskserv or cluster")
            c.add_argument("name")
        elif typed == "optional":
            c.add_argument("type", nargs="?", help="provider, taskserv or cluster")
        if versioned:
            c.add_argument("--version", "-v", dest="ext_version", metavar="VERSION", help="version or constraint")
        c.set_defaults(run=_client, action=name)
        return c

    load = client("load", "load an extension", typed="required", versioned=True)
    load.add_argument("--with-dependencies", "-d", action="store_true")
    client("reload", "drop an extension from the cache and load it again", typed="required", versioned=True)
    client("list", "what is loaded now", typed="optional")
    client("status", "whether an extension is loaded", typed="required", versioned=True)
    disc = client("discover", "what is available on disk", typed="optional")
    # SUPPRESS: a NAME left out must not overwrite a --name given before it.
    disc.add_argument(
        "name", nargs="?", default=argparse.SUPPRESS, action=_OneName, metavar="NAME", help="only this extension"
    )
    disc.add_argument("--name", action=_OneName, help="same as NAME")
    client("stats", "cache and load statistics")
    client("clear", "empty the cache (extensions.cache.clear)")
    graph = client("graph", "an extension's dependency graph", typed="required", versioned=True)
    graph.add_argument("--format", "-f", choices=["json", "dot", "mermaid"], default="json")
    client("watch", "print extensions.loaded and extensions.unloaded events as they come")
    return p


class _Subcommand(argparse.ArgumentParser):
    """A subcommand's parser: what it does not recognise is its own usage error. argparse would hand it up to the
    top-level parser, whose usage (`COMMAND ...`) does not show the options the person was reaching for."""

    def parse_known_args(  # type: ignore[override]  # typeshed overloads it on the namespace type
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return parsed, rest


class _OneName(argparse.Action):
    """`discover TYPE NAME` and `discover TYPE --name NAME` mean the same; two different names are an error."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, self.dest, None)
        if given is not None and values is not None and given != values:
            raise argparse.ArgumentError(self, f"{values!r} differs from the name given before, {given!r}")
        setattr(namespace, self.dest, values)


# --- the service ---


def _config(args: argparse.Namespace) -> Config:
    overrides = list(args.set)
    if args.nats_url:
        overrides.append(f'nats.url="{args.nats_url}"')
    return load_config(args.config, environ=os.environ, overrides=overrides)


def _start(args: argparse.Namespace) -> Config | None:
    setup_logging(args.log_level, json_lines=not sys.stderr.isatty())
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"extension-loader: {exc}", file=sys.stderr)
        return None
    return config


def _serve(args: argparse.Namespace) -> int:
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
}
DEV_USER = "loader"  # the nats.conf user the service connects as, unless the configuration names credentials


def _dev(args: argparse.Namespace) -> int:
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
    nats_cfg = config.nats
    if not (nats_cfg.user or nats_cfg.token or nats_cfg.creds):
        password = server_env["NATS_LOADER_PASSWORD"]
        config = msgspec.structs.replace(
            config, nats=msgspec.structs.replace(nats_cfg, user=DEV_USER, password=password)
        )
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
        f"  nats request extensions.load "
        f'\'{{"extension_type":"taskserv","name":"kubernetes","version":"1.28.0"}}\'\n\n'
        f"No password needed on this machine: nats.conf lets a client without one in as `orchestrator`\n"
        f"(development only). Ctrl-C stops the service and nats-server.\n"
    )
    try:
        return _run_service(config, hint)
    finally:
        server.stop()


# --- the client ---


class _CaFileError(Exception):
    """--tls-ca names a file that cannot be read as a CA file; ssl's own errors do not name it."""

    def __init__(self, path: str, exc: OSError) -> None:
        if isinstance(exc, ssl.SSLError):
            problem = f"not a PEM file of CA certificates ({exc.reason or exc.strerror or exc})"
        else:
            problem = exc.strerror or str(exc)
        super().__init__(f"--tls-ca {path}: {problem}")


def _client(args: argparse.Namespace) -> int:
    try:
        return anyio.run(_client_main, args)
    except RemoteError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.details:
            print(json.dumps(exc.details, indent=2), file=sys.stderr)
        return 1
    except (_CaFileError, _Forbidden) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except nats.errors.NoRespondersError as exc:
        who = f"as user {args.user!r}" if args.user else "without a user (--user)"
        print(
            f"error: {args.server}: {exc}\n"
            f"hint: NATS is up, but no extension-loader service answers on {args.prefix}.*: the service is not "
            f"running, or it cannot be reached {who}",
            file=sys.stderr,
        )
        return 4
    except (OSError, nats.errors.Error) as exc:
        # The error callback often saw the very error that is raised (an authorization violation): say it once.
        cause = f" ({_last_error[-1]})" if _last_error and _last_error[-1] not in str(exc) else ""
        print(f"error: {args.server}: {exc}{cause}", file=sys.stderr)
        return 4


_last_error: list[str] = []
_forbidden: list[anyio.Event] = []  # set when the server refuses what this user sent: no reply will come


async def _quiet(exc: Exception) -> None:
    # nats-py's default error callback logs a traceback per attempt; a person wants one line at the end.
    _last_error.append(str(exc))
    if "permissions violation" in str(exc).lower():
        for event in _forbidden:
            event.set()


class _Forbidden(Exception):
    """The NATS server refused the request (or the inbox for its reply) to this user."""


async def _client_main(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "servers": [args.server],
        "name": "extension-loader-cli",
        "connect_timeout": 5,
        "max_reconnect_attempts": 1,
        "allow_reconnect": False,
        "error_cb": _quiet,
    }
    if args.user:
        options.update(user=args.user, password=args.password or "")
    if args.tls_ca:
        try:
            options["tls"] = ssl.create_default_context(cafile=args.tls_ca)
        except OSError as exc:
            raise _CaFileError(args.tls_ca, exc) from exc
    nc = await nats.connect(**options)
    try:
        if args.action == "watch":
            return await _watch(nc, args)
        started = time.perf_counter()
        data = await _unless_forbidden(_call(LoaderClient(nc, prefix=args.prefix, timeout=args.timeout), args), args)
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(json.dumps(data, indent=2) if args.json else _readable(args, data, elapsed_ms))
        return 0
    finally:
        await nc.drain()


async def _call(c: LoaderClient, args: argparse.Namespace) -> Any:
    version = getattr(args, "ext_version", None)
    match args.action:
        case "load":
            return await c.load(args.type, args.name, version, with_dependencies=args.with_dependencies)
        case "reload":
            return await c.reload(args.type, args.name, version)
        case "list":
            return await c.list(args.type)
        case "status":
            return await c.status(args.type, args.name, version)
        case "discover":
            return await c.discover(args.type, args.name)
        case "stats":
            return await c.stats()
        case "clear":
            return await c.clear()
        case "graph":
            return await c.graph(args.type, args.name, version, args.format)
        case _:  # pragma: no cover - argparse allows no other
            raise AssertionError(args.action)


async def _unless_forbidden(call: Awaitable[Any], args: argparse.Namespace) -> Any:
    """The call's result; _Forbidden at once when the server refuses the request to this user, which would
    otherwise look like a service that does not answer until --timeout runs out."""
    forbidden = anyio.Event()
    _forbidden.append(forbidden)
    result: list[Any] = []
    failure: list[Exception] = []
    try:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    result.append(await call)
                except Exception as exc:  # raised out of the task group, it would come wrapped in a group
                    failure.append(exc)
                tg.cancel_scope.cancel()

            async def refused() -> None:
                await forbidden.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            tg.start_soon(refused)
    finally:
        _forbidden.remove(forbidden)
    if failure:
        raise failure[0]
    if not result:
        who = f"user {args.user!r}" if args.user else "a client without a user (--user)"
        raise _Forbidden(f"{args.server}: {_last_error[-1]}: {who} may not make this request (README.md, Security)")
    return result[0]


async def _watch(nc: Client, args: argparse.Namespace) -> int:
    sub = await nc.subscribe(f"{args.prefix}.loaded")
    sub2 = await nc.subscribe(f"{args.prefix}.unloaded")
    await flush_subscriptions(nc)  # say "watching" only once the server has the subscriptions
    print(
        f"watching {args.prefix}.loaded and {args.prefix}.unloaded on {args.server} (Ctrl-C stops)",
        file=sys.stderr,
    )
    send, receive = anyio.create_memory_object_stream[Any](100)

    async def pump(s: Any) -> None:
        async for msg in s.messages:
            await send.send(msg)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump, sub)
        tg.start_soon(pump, sub2)
        async for msg in receive:
            event = msgspec.json.decode(msg.data)
            print(json.dumps(event) if args.json else _event_line(msg.subject, event), flush=True)
    return 0


def _event_line(subject: str, e: dict[str, Any]) -> str:
    when = e.get("timestamp", "")[11:19]
    if subject.endswith(".loaded"):
        m = e["extension"]["metadata"]
        return (
            f"{when} loaded   {m['extension_type']}:{m['name']}:{m['version']}  reason={e['reason']} "
            f"{e['duration_ms']:.1f} ms  instance={e['instance_id']}"
        )
    return (
        f"{when} unloaded {e['extension_type']}:{e['name']}:{e['version']}  reason={e['reason']}  "
        f"instance={e['instance_id']}"
    )


def _readable(args: argparse.Namespace, data: Any, elapsed_ms: float) -> str:
    action = args.action
    if action in ("load", "reload"):
        m = data["metadata"]
        deps = ", ".join(m["dependencies"]) or "none"
        verb = "reloaded" if action == "reload" else "loaded"
        return "\n".join(
            [
                f"{m['extension_type']} {m['name']} {m['version']} {verb} in {elapsed_ms:.1f} ms",
                f"  {m['description']}",
                f"  path:         {data['path']}",
                f"  digest:       {data['digest']}",
                f"  dependencies: {deps}",
                f"  loaded at:    {data['loaded_at']}",
            ]
        )
    if action == "list":
        rows = [
            (e["metadata"]["extension_type"], e["metadata"]["name"], e["metadata"]["version"], e["loaded_at"])
            for e in data
        ]
        return _table(("TYPE", "NAME", "VERSION", "LOADED AT"), rows) if rows else "nothing is loaded"
    if action == "status":
        where = f"{args.type} {args.name}"
        return f"{where}: loaded ({', '.join(data['versions'])})" if data["loaded"] else f"{where}: not loaded"
    if action == "discover":
        rows = [(a["extension_type"], a["name"], ", ".join(a["versions"]), a["latest"]["description"]) for a in data]
        return _table(("TYPE", "NAME", "VERSIONS", "DESCRIPTION"), rows) if rows else "no extensions found"
    if action == "stats":
        c, loads = data["cache"], data["loads"]
        return "\n".join(
            [
                f"instance {data['instance_id']}, up {data['uptime_s']:.0f} s, nushell {data['nushell']['version']}",
                f"cache: {c['size']}/{c['capacity']} entries, {c['hits']} hits, {c['misses']} misses "
                f"(hit ratio {c['hit_ratio']:.2f}), {c['evictions']} evictions",
                f"loads: {loads['total']} total, {loads['cold']} cold, {loads['failed']} failed, "
                f"{loads['coalesced']} coalesced; {data['in_flight']} in flight",
            ]
        )
    if action == "clear":
        return f"cleared {data['cleared']} entries"
    if action == "graph":
        if "text" in data:
            return str(data["text"]).rstrip("\n")
        return "install order:\n" + "\n".join(f"  {i + 1}. {node}" for i, node in enumerate(data["order"]))
    return json.dumps(data, indent=2)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
