"""The client subcommands (one per request subject, `commands.py`, and `watch`): connect as the person asks,
make the call through `LoaderClient`, print the result, and turn every failure into one line and an exit code
(1: the service answered an error; 4: NATS or TLS refused or is not there). A command whose subject has a fleet
twin (`list`, `status`, `stats`, `clear`) asks every instance with `--all` and prints each one's answer."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, NamedTuple

import anyio
import msgspec
import nats
from nats.aio.client import Client

from ...contract.config import inbox_prefix_for
from ...contract.subjects import EVENTS, request_subject
from ...wire.connection import flush_subscriptions
from ...wire.event_filter import genuine_event
from ...wire.peers import PeerEvent
from ..client import Gathered, LoaderClient, RemoteError
from .commands import request_body
from .printing import event_line, readable, readable_fleet

DEFAULT_URL = "nats://127.0.0.1:4222"
TIMEOUT_S = 40.0  # for one reply: longer than a cold load may run (nushell.timeout_s, 30 s by default)
FLEET_TIMEOUT_S = 1.0  # for every instance's reply: --all always waits this long unless --replies says how many


class CaFileError(Exception):
    """--tls-ca names a file that cannot be read as a CA file; ssl's own errors do not name it."""

    def __init__(self, path: str, exc: OSError) -> None:
        if isinstance(exc, ssl.SSLError):
            problem = f"not a PEM file of CA certificates ({exc.reason or exc.strerror or exc})"
        else:
            problem = exc.strerror or str(exc)
        super().__init__(f"--tls-ca {path}: {problem}")


def run_client(args: argparse.Namespace) -> int:
    try:
        return anyio.run(_client_main, args)
    except RemoteError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.details:
            print(json.dumps(exc.details, indent=2), file=sys.stderr)
        return 1
    except (CaFileError, Forbidden) as exc:
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
        print(f"error: {args.server}: {_with_cause(exc)}", file=sys.stderr)
        return 4


def _with_cause(exc: Exception) -> str:
    """The error, and what the error callback saw last when it says more ("no servers available" says not why).
    The callback often saw the very error that is raised (an authorization violation): then it is said once."""
    cause = f" ({_last_error[-1]})" if _last_error and _last_error[-1] not in str(exc) else ""
    return f"{exc}{cause}"


_last_error: deque[str] = deque(maxlen=8)  # what the error callback saw last (`watch` may run for days)
_forbidden: list[anyio.Event] = []  # set when the server refuses what this user sent: no reply will come


async def _quiet(exc: Exception) -> None:
    # nats-py's default error callback logs a traceback per attempt; a person wants one line at the end.
    _last_error.append(str(exc))
    if "permissions violation" in str(exc).lower():
        for event in _forbidden:
            event.set()


class Forbidden(Exception):
    """The NATS server refused the request (or the inbox for its reply) to this user."""


async def connect(args: argparse.Namespace, **more: Any) -> Client:
    """A connection as the person asked (--server, --user, --password, --tls-ca, --inbox-prefix): one attempt,
    no reconnects; `more` adds nats-py options (a callback)."""
    return await nats.connect(**connect_options(args), **more)


DRAIN_TIMEOUT_S = 5  # what the server owes a command's subscriptions when it ends


async def let_go(nc: Client) -> None:
    """Drain a command's connection, also when the command was cancelled (a refusal ends it at once). Drained in a
    cancelled scope, nats-py would stop at its first await and leave its subscriptions' drain tasks to be
    cancelled when the command exits, and asyncio would print their traceback to the person."""
    if nc.is_closed:  # the server went away
        return
    with anyio.CancelScope(shield=True):
        await nc.drain()


def connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """nats-py's `connect` options for a person's command: server, user, TLS, and the inbox prefix that nats.conf
    gives that user (replies to anyone else's prefix are refused)."""
    options: dict[str, Any] = {
        "servers": [args.server],
        "name": "extension-loader-cli",
        "connect_timeout": 5,
        "max_reconnect_attempts": 1,
        "allow_reconnect": False,
        "error_cb": _quiet,
        "inbox_prefix": inbox_prefix(args),
        "drain_timeout": DRAIN_TIMEOUT_S,
    }
    if args.user:
        options.update(user=args.user, password=args.password or "")
    if args.tls_ca:
        try:
            options["tls"] = ssl.create_default_context(cafile=args.tls_ca)
        except OSError as exc:
            raise CaFileError(args.tls_ca, exc) from exc
    return options


def inbox_prefix(args: argparse.Namespace) -> str:
    return str(args.inbox_prefix or inbox_prefix_for(args.user))


async def _client_main(args: argparse.Namespace) -> int:
    if args.action == "watch":
        return await _watch(args)
    nc = await connect(args)
    try:
        timeout = args.timeout if args.timeout is not None else FLEET_TIMEOUT_S if args.fleet else TIMEOUT_S
        client = LoaderClient(nc, prefix=args.prefix, timeout=timeout)
        if args.fleet:
            return _print_fleet(args, await unless_forbidden(_gather(client, args), args))
        started = time.perf_counter()
        data = await unless_forbidden(_call(client, args), args)
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(json.dumps(data, indent=2) if args.json else readable(args, data, elapsed_ms))
        return 0
    finally:
        await let_go(nc)


async def _gather(c: LoaderClient, args: argparse.Namespace) -> Gathered:
    body = request_body(args, request_subject(args.subject).request)
    return await c.gather(args.subject, body, replies=args.replies)


def _print_fleet(args: argparse.Namespace, gathered: Gathered) -> int:
    """Each instance's answer; error replies (which do not say whose they are) on standard error, exit 1."""
    if gathered.answers:
        print(json.dumps(gathered.answers, indent=2) if args.json else readable_fleet(args, gathered.answers))
    for error in gathered.errors:
        print(f"error from an instance: {error.code}: {error.message}", file=sys.stderr)
    return 1 if gathered.errors else 0


async def _call(c: LoaderClient, args: argparse.Namespace) -> Any:
    return await c.request(args.subject, request_body(args, request_subject(args.subject).request))


async def unless_forbidden(call: Awaitable[Any], args: argparse.Namespace, *, registry: bool = False) -> Any:
    """The call's result; Forbidden at once when the server refuses the request to this user, which would
    otherwise look like a service that does not answer until --timeout runs out. A `registry` command refused
    JetStream's API under $JS.API is told the prefix nats.conf's accounts give the registry."""
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
        refusal = _last_error[-1]
        if f'subscription to "{inbox_prefix(args)}.'.lower() in refusal.lower():
            raise Forbidden(
                f"{args.server}: {refusal}: {who} may not receive replies under {inbox_prefix(args)}: give the "
                "prefix its server allows with --inbox-prefix (README.md, Security)"
            )
        if registry and '"$js.api.' in refusal.lower():
            # nats.conf's users reach the registry and the event log only under the prefixes their imports give.
            raise Forbidden(
                f"{args.server}: {refusal}: {who} may not use JetStream's API under $JS.API; with nats.conf's "
                "accounts the registry is under $JS.reg.API: add --set registry.api_prefix='$JS.reg.API' "
                "(README.md, Security)"
            )
        raise Forbidden(f"{args.server}: {refusal}: {who} may not make this request (README.md, Security)")
    return result[0]


WATCH_RETRY_S = 1.0  # how often `watch` tries the server again once it has lost it


async def _watch(args: argparse.Namespace) -> int:
    """Prints events until Ctrl-C. A connection lost is said, and made again each second until the server takes
    it; the first one's failure is the command's (exit 4, one line)."""
    subjects = [f"{args.prefix}.{event.suffix}" for event in EVENTS]
    watching = await _watching(args, subjects)
    print(f"watching {' and '.join(subjects)} on {args.server} (Ctrl-C stops)", file=sys.stderr)
    while True:
        try:
            await _print_events(args, subjects, watching)
        finally:
            await let_go(watching.nc)
        print(
            f"lost the connection to {args.server}: trying again each second (events published until it is back "
            "are not shown here; the stream EXTENSION_EVENTS keeps them where it is set up: README.md, Durable "
            "events)",
            file=sys.stderr,
        )
        watching = await _watching_again(args, subjects)
        print(f"watching again on {args.server}", file=sys.stderr)


class _Watching(NamedTuple):
    nc: Client
    subs: list[Any]
    closed: anyio.Event  # set once the connection is closed


async def _watching(args: argparse.Namespace, subjects: list[str]) -> _Watching:
    """A connection subscribed to the event subjects, the server holding the subscriptions."""
    closed = anyio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await connect(args, closed_cb=on_closed)
    try:
        subs = [await nc.subscribe(subject) for subject in subjects]
        await flush_subscriptions(nc)  # say "watching" only once the server has the subscriptions
    except BaseException:
        await let_go(nc)
        raise
    return _Watching(nc, subs, closed)


async def _watching_again(args: argparse.Namespace, subjects: list[str]) -> _Watching:
    said = ""
    while True:
        await anyio.sleep(WATCH_RETRY_S)
        try:
            return await _watching(args, subjects)
        except (OSError, nats.errors.Error) as exc:
            why = _with_cause(exc)
            if why != said:  # each new reason once, not once a second
                said = why
                print(f"still no connection to {args.server}: {said}", file=sys.stderr)


async def _print_events(args: argparse.Namespace, subjects: list[str], watching: _Watching) -> None:
    """Until the connection closes."""
    send, receive = anyio.create_memory_object_stream[Any](100)

    async def pump(s: Any) -> None:
        async for msg in s.messages:
            await send.send(msg)

    async def until_closed() -> None:
        await watching.closed.wait()
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(until_closed)
        for sub in watching.subs:
            tg.start_soon(pump, sub)
        async for msg in receive:
            if not genuine_event(msg, subjects):  # a stream's answer or delivery sent here: not an event
                print(f"ignored a message on {msg.subject} that is not an event", file=sys.stderr)
                continue
            try:
                # Read as the peers' listener reads an event (who sent it, why), so an event a newer loader sends,
                # with a reason this one does not know, is still printed.
                msgspec.json.decode(msg.data, type=PeerEvent)
                event = msgspec.json.decode(msg.data)  # printed as it came
            except msgspec.DecodeError:
                print(f"ignored an unreadable message on {msg.subject}: not an event", file=sys.stderr)
                continue
            print(json.dumps(event) if args.json else event_line(msg.subject, event), flush=True)
