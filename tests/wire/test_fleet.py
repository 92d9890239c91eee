"""Asking every instance at once: the `extensions.all.*` subjects, `LoaderClient.gather` and the CLI's `--all`.

Review issue 11, point 5: `list`, `status`, `stats` and `cache.clear` answer for whichever instance the queue
group picked. Two real instances on one nats-server; one has extensions loaded that the other has not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import nats.errors
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.contract.messages import ExtensionType
from service.wire.service import ExtensionService
from tests.conftest import WAIT, EventLog, make_config, running_service

pytestmark = pytest.mark.anyio

CLI = str(Path(sys.executable).with_name("extension-loader"))
ETCD = {"extension_type": "taskserv", "name": "etcd"}


@asynccontextmanager
async def two_instances(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> AsyncIterator[tuple[ExtensionService, ExtensionService]]:
    """Instance A with taskservs etcd and containerd loaded (through NATS, while it was the only one), and
    instance B with redis (loaded by its own manager, so that no request could go to A)."""
    async with running_service(make_config(nats_server.url, tmp_path / "a"), instance_id="A") as a:
        client = LoaderClient(nc, timeout=WAIT)
        await client.load("taskserv", "etcd")
        await client.load("taskserv", "containerd")
        async with running_service(make_config(nats_server.url, tmp_path / "b"), instance_id="B") as b:
            await b.manager.load(ExtensionType.TASKSERV, "redis", None)
            yield a, b


def names(answer: dict[str, object]) -> list[str]:
    data = answer["data"]
    assert isinstance(data, list)
    return [e["metadata"]["name"] for e in data]


async def test_every_instance_answers_for_itself(
    nats_server: NatsServer, nc: Client, tmp_path: Path, events: EventLog
) -> None:
    async with two_instances(nats_server, nc, tmp_path):
        client = LoaderClient(nc, timeout=WAIT)

        status = await client.gather("status", ETCD, replies=2)
        assert status.errors == []
        assert status.answers == [
            {"instance_id": "A", "data": {"loaded": True, "versions": ["3.5.12"]}},
            {"instance_id": "B", "data": {"loaded": False, "versions": []}},
        ]

        listed = await client.gather("list", replies=2)
        assert [(a["instance_id"], names(a)) for a in listed.answers] == [
            ("A", ["containerd", "etcd"]),
            ("B", ["redis"]),
        ]
        only_redis = await client.gather("list", {"extension_type": "taskserv"}, replies=2)
        assert [len(a["data"]) for a in only_redis.answers] == [2, 1]

        # Without `replies` the gather waits out its time-out, as `nats request --replies 0` does: still exactly
        # one answer from each instance.
        stats = await LoaderClient(nc, timeout=2.0).gather("stats")
        assert [(a["instance_id"], a["data"]["instance_id"]) for a in stats.answers] == [("A", "A"), ("B", "B")]
        assert [a["data"]["cache"]["size"] for a in stats.answers] == [2, 1]

        cleared = await client.gather("cache.clear", replies=2)
        assert cleared.answers == [
            {"instance_id": "A", "data": {"cleared": 2}},
            {"instance_id": "B", "data": {"cleared": 1}},
        ]
        unloaded = await events.wait_for(3, ".unloaded")
        assert sorted((e["instance_id"], e["name"], e["reason"]) for e in unloaded) == [
            ("A", "containerd", "cleared"),
            ("A", "etcd", "cleared"),
            ("B", "redis", "cleared"),
        ]
        assert [names(a) for a in (await client.gather("list", replies=2)).answers] == [[], []]


async def test_a_request_error_comes_from_every_instance(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    async with two_instances(nats_server, nc, tmp_path):
        gathered = await LoaderClient(nc, timeout=WAIT).gather("status", {"extension_type": "taskserv"}, replies=2)
        assert gathered.answers == []
        assert [e.code for e in gathered.errors] == ["invalid_request", "invalid_request"]


async def test_gather_without_a_service_is_no_responders(nats_server: NatsServer, nc: Client) -> None:
    with anyio.fail_after(WAIT), pytest.raises(nats.errors.NoRespondersError):
        await LoaderClient(nc, timeout=WAIT).gather("stats")


async def cli(server: NatsServer, *args: str) -> tuple[int, str, str]:
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([CLI, *args, "--server", server.url], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_cli_s_all_shows_which_instance_has_what(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    both = ("--all", "--replies", "2", "--timeout", str(WAIT))
    async with two_instances(nats_server, nc, tmp_path):
        code, out, err = await cli(nats_server, "status", "taskserv", "etcd", *both)
        assert (code, err) == (0, "")
        assert out.splitlines()[0] == "taskserv etcd: loaded on 1 of 2 instances"
        assert [line.split() for line in out.splitlines()[1:]] == [
            ["INSTANCE", "STATUS"],
            ["A", "loaded", "(3.5.12)"],
            ["B", "not", "loaded"],
        ]

        code, out, _ = await cli(nats_server, "list", *both)
        assert code == 0
        assert [line.split() for line in out.splitlines()[1:]] == [
            ["INSTANCE", "TYPE", "NAME", "VERSION"],
            ["A", "taskserv", "containerd", "1.7.13"],
            ["A", "taskserv", "etcd", "3.5.12"],
            ["B", "taskserv", "redis", "7.2.4"],
        ]

        code, out, _ = await cli(nats_server, "stats", "--json", *both)
        assert code == 0 and [a["instance_id"] for a in json.loads(out)] == ["A", "B"]

        code, out, _ = await cli(nats_server, "clear", *both)
        assert code == 0
        assert out.splitlines()[0] == "cleared 3 entries on 2 instances"
        assert [line.split() for line in out.splitlines()[1:]] == [
            ["INSTANCE", "CLEARED"],
            ["A", "2"],
            ["B", "1"],
        ]

        code, out, err = await cli(nats_server, "status", "taskserv", "nope", *both)
        assert (code, out) == (1, "")
        assert err.count("error from an instance: not_found:") == 2

    code, out, err = await cli(nats_server, "stats", "--replies", "2")
    assert code == 2 and "--replies goes with --all" in err


async def test_the_cli_s_all_without_a_service_says_so(nats_server: NatsServer) -> None:
    code, out, err = await cli(nats_server, "stats", "--all")
    assert (code, out) == (4, "")
    assert "no extension-loader service answers" in err and "Traceback" not in err
