"""The `extension-loader` client commands, run as a person runs them, against a real service."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from service.natsserver import NatsServer
from service.server import ExtensionService
from tests.conftest import WAIT

pytestmark = pytest.mark.anyio

CLI = str(Path(sys.executable).with_name("extension-loader"))


async def cli(server: NatsServer, *args: str) -> tuple[int, str, str]:
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([CLI, *args, "--server", server.url], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


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


async def test_watch_prints_events_as_they_come(nats_server: NatsServer, service: ExtensionService) -> None:
    async with await anyio.open_process([CLI, "watch", "--json", "--server", nats_server.url]) as watcher:
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            with anyio.fail_after(WAIT):
                said = b""
                while b"watching" not in said:  # subscribed: the line comes after its subscriptions
                    said += await watcher.stderr.receive()
                code, _, _ = await cli(nats_server, "load", "provider", "aws")
                assert code == 0
                line = b""
                while b"\n" not in line:
                    line += await watcher.stdout.receive()
            event = json.loads(line.split(b"\n")[0])
            assert event["reason"] == "load" and event["extension"]["metadata"]["name"] == "aws"
        finally:
            watcher.kill()
