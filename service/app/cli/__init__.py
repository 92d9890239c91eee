"""The `extension-loader` command: which subcommands there are and their options.

    serving.py   `serve` and `dev`: the service itself (exit codes 2 for bad configuration, 3 for a refused
                 start, 4 when NATS cannot be reached)
    commands.py  a command per request subject (`load`, `list`, ...), its arguments from the subjects table
    calls.py     those commands and `watch`: a client for people, through `LoaderClient`
    registry.py  `keygen`, `publish`, `yank`, `search`, `refresh`, `resign`: the JetStream registry, through
                 `app/publishing.py`
    bundle.py    `bundle export`, `bundle import`: the registry carried to a site that cannot reach it
    certs.py     `certs`: the development CA and the NATS server's certificate, through `app/certs.py`
    setup.py     `setup`: the events stream and the registry's buckets made or updated, through `app/setup.py`
    printing.py  how their results read in a terminal

This package is the command line's edge: it parses arguments and prints; what it runs lives in the layers
below (`service.app.serve` for the service, `service.app.client` for the calls).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ...contract.config import is_subject
from ..serve import service_version
from . import commands
from .bundle import add_bundle_command
from .calls import DEFAULT_URL, run_client
from .certs import add_certs_command
from .registry import run_keygen, run_registry
from .serving import run_dev, run_serve
from .setup import ADMIN, run_setup

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tls_close()
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "replies", 0) and not args.fleet:
        parser.error(f"{args.command}: --replies goes with --all")
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
    s.set_defaults(run=run_serve)
    d = sub.add_parser("dev", help="start nats-server with nats.conf, then serve; Ctrl-C stops both")
    server_options(d)
    d.add_argument("--nats-config", default="nats.conf", metavar="FILE", help="(default: nats.conf)")
    d.set_defaults(run=run_dev)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        _connection_options(c)
        c.add_argument("--prefix", default="extensions", help="subject prefix (default: extensions)")
        c.add_argument(
            "--timeout", type=float, metavar="SECONDS", help="seconds to wait for a reply (default: 40; with --all: 1)"
        )
        c.add_argument("--json", action="store_true", help="print the reply's data as JSON")
        c.set_defaults(run=run_client, action=name, fleet=False, replies=0)
        return c

    # One command per request subject of the subjects table, its arguments those of its request.
    for subject in commands.subjects():
        commands.add_request_arguments(client(commands.command_name(subject), commands.command_help(subject)), subject)
    client("watch", "print extensions.loaded and extensions.unloaded events as they come")

    k = sub.add_parser("keygen", help="write a new release key (an nkey seed SO..., mode 0600); print its O... key")
    k.add_argument("file", metavar="FILE", help="where to write the seed; an existing file is never overwritten")
    k.set_defaults(run=run_keygen)
    add_certs_command(sub)

    def registry(name: str, help: str) -> argparse.ArgumentParser:
        r = client(name, help)
        r.add_argument("--config", "-c", metavar="FILE", help="TOML file over the packaged defaults ([registry])")
        r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
        r.set_defaults(run=run_registry)
        return r

    pub = registry("publish", "check, pack, sign and publish one extension version to the registry")
    pub.add_argument("folder", metavar="DIR", help="the folder of one version (it holds metadata.toml)")
    pub.add_argument("--key", "-k", required=True, metavar="FILE", help="the signing key (`keygen` writes one)")
    y = registry("yank", "mark a published version yanked: never chosen by a constraint, still loaded when pinned")
    y.add_argument("type", help="provider, taskserv or cluster")
    y.add_argument("name")
    y.add_argument("ext_version", metavar="VERSION")
    y.add_argument("--key", "-k", required=True, metavar="FILE", help="the signing key, which signs the new state")
    y.add_argument("--undo", action="store_true", help="restore a yanked version")
    se = registry("search", "find extensions in the registry by name and description")
    se.add_argument("words", nargs="+", metavar="WORD")
    rf = registry("refresh", "sign a timestamp of the index: each extension's signed state as it is now")
    rf.add_argument("--key", "-k", required=True, metavar="FILE", help="the signing key")
    rf.add_argument(
        "--expires-in",
        type=_seconds,
        default=86_400.0,
        metavar="SECONDS",
        help="how long loaders may rely on it (default: 86400, a day); refresh again before",
    )
    rs = registry(
        "resign",
        "sign again with KEY the releases of the old format, or the releases and states a retired release key signed",
    )
    rs.add_argument("--key", "-k", required=True, metavar="FILE", help="the signing key that signs them now")
    rs.add_argument(
        "--from",
        dest="from_keys",
        action="append",
        required=True,
        metavar="KEY",
        help="a public key that signed them: U... in the old format, or a retired O... (repeat for several)",
    )
    add_bundle_command(sub, _connection_options)

    st = sub.add_parser("setup", help="create or update the events stream and the registry's buckets (as admin)")
    _connection_options(st, user=ADMIN)
    st.add_argument(
        "--config", "-c", metavar="FILE", help="TOML file over the packaged defaults ([events], [registry])"
    )
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    st.add_argument(
        "--replicas",
        type=int,
        choices=range(1, 6),
        metavar="N",
        help="copies of each stream (1-5; default: 1 for a stream it creates, the count one has for one that is there)",
    )
    st.add_argument("--force", action="store_true", help="apply changes that lose data too (a time to live, ...)")
    st.add_argument(
        "--site",
        action="store_true",
        help="at an edge site (a leaf node of the hub): mirrors of the hub's registry buckets in place of the buckets",
    )
    st.add_argument(
        "--hub-domain",
        default="hub",
        type=_domain,
        metavar="NAME",
        help="with --site: the hub's JetStream domain (default: hub)",
    )
    st.set_defaults(run=run_setup)
    return p


def _domain(text: str) -> str:
    """A JetStream domain: one subject token."""
    if not text or any(c in text for c in ". *>\t\r\n"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JetStream domain (one word, no dots or spaces)")
    return text


def _quiet_tls_close() -> None:
    """nats-py turns its connection into TLS under asyncio's stream protocol, which then logs "returning true from
    eof_received() has no effect when using ssl" whenever a TLS connection closes: nothing is wrong, so a person's
    command does not print it."""
    logging.getLogger("asyncio").addFilter(lambda record: "eof_received()" not in record.getMessage())


def _connection_options(sp: argparse.ArgumentParser, *, user: str | None = None) -> None:
    """--server, --user, --password, --inbox-prefix and --tls-ca; `user`: the user without --user or $NATS_USER."""
    sp.add_argument("--server", "-s", default=os.environ.get("NATS_URL", DEFAULT_URL), metavar="URL")
    # The nats CLI's variables: NATS_USER, NATS_PASSWORD, NATS_CA. Without a user, nats.conf's no_auth_user.
    if user is None:
        sp.add_argument("--user", default=os.environ.get("NATS_USER") or None, help="(default: $NATS_USER)")
        sp.add_argument("--password", default=os.environ.get("NATS_PASSWORD") or None, help="(default: $NATS_PASSWORD)")
    else:
        # nats.conf's password variable of that user, as the server reads it, serves where $NATS_PASSWORD is unset.
        variable = f"NATS_{user.upper()}_PASSWORD"
        sp.add_argument("--user", default=os.environ.get("NATS_USER") or user, help=f"(default: $NATS_USER, or {user})")
        sp.add_argument(
            "--password",
            default=os.environ.get("NATS_PASSWORD") or os.environ.get(variable) or None,
            help=f"(default: $NATS_PASSWORD, or ${variable})",
        )
    # nats.conf lets each user receive replies under its own prefix only (the nats CLI's --inbox-prefix).
    sp.add_argument(
        "--inbox-prefix",
        type=_inbox_prefix,
        metavar="PREFIX",
        help="where replies arrive (default: _INBOX.<user>, or _INBOX.orchestrator without --user)",
    )
    sp.add_argument(
        "--tls-ca",
        default=os.environ.get("NATS_CA") or None,
        metavar="FILE",
        help="CA file that signed the server's certificate; turns TLS on (default: $NATS_CA)",
    )


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _inbox_prefix(text: str) -> str:
    if not is_subject(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a NATS subject without wildcards (e.g. _INBOX.orchestrator)")
    return text


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


if __name__ == "__main__":
    sys.exit(main())
