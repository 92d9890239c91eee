"""The `certs` subcommand: a development CA and the NATS server's certificate in a folder (`app/certs.py` makes
them), for docker-compose.yml's one-shot `certs` service and deploy/cluster.

Exit codes: 0 the files are there and good (made, renewed or kept); 2 a bad argument, or the folder cannot be
written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import cert_settings as certs


def add_certs_command(sub: argparse._SubParsersAction[Any]) -> None:
    """`certs DIR [--host NAME ...] [--days N]`, among the subcommands of `sub`."""
    c = sub.add_parser(
        "certs",
        help="make a development CA and the NATS server's certificate in DIR (kept while good; renewed otherwise)",
    )
    c.add_argument("folder", metavar="DIR", help="where ca.pem, ca-key.pem, server-cert.pem, server-key.pem go")
    c.add_argument(
        "--host",
        action="append",
        type=_host,
        metavar="NAME",
        help=f"a host name or IP address clients dial, once per name (default: {', '.join(certs.DEFAULT_HOSTS)})",
    )
    c.add_argument(
        "--days",
        type=_days,
        default=certs.DEFAULT_DAYS,
        metavar="N",
        help=f"how long new certificates are valid (default: {certs.DEFAULT_DAYS}; more than "
        f"{certs.RENEW_WITHIN.days}: they are renewed {certs.RENEW_WITHIN.days} days before they expire)",
    )
    c.set_defaults(run=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    try:
        from .. import certs as making  # the cryptography library, only when certificates are made

        made = making.ensure(folder, args.host or certs.DEFAULT_HOSTS, days=args.days)
        summary = making.describe(folder)
    except (OSError, ValueError) as exc:
        print(f"error: {folder}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    for renewal in made:
        print(f"{folder}: {'made' if renewal.reason == 'missing' else 'renewed'} {renewal}")
    if not made:
        print(f"{folder}: kept the CA and the server certificate")
    print(f"{folder}/{certs.SERVER_CERT}: {summary}; clients trust {folder}/{certs.CA_CERT}")
    return 0


def _host(text: str) -> str:
    try:
        return certs.check_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days <= certs.RENEW_WITHIN.days or days > 36500:
        raise argparse.ArgumentTypeError(
            f"{days}: give more than {certs.RENEW_WITHIN.days} days (certificates are renewed "
            f"{certs.RENEW_WITHIN.days} days before they expire) and at most 36500"
        )
    return days
