"""`with_dependencies` against real NATS and real Nushell: independent dependencies load at the same time, the
events still come in dependency order, and a failure is the one a load in that order would meet first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from tests.conftest import WAIT, EventLog, make_config, running_service, write_extension

pytestmark = pytest.mark.anyio


def slow_module(defs: int = 3000) -> str:
    """A module that takes Nushell a good while to parse: a cold load that is slow for real."""
    return "\n".join(f"export def cmd{i} [x: int] {{ {{value: ($x * {i})}} }}" for i in range(defs)) + "\n"


def loaded_keys(events: list[dict[str, Any]]) -> list[str]:
    metas = [event["extension"]["metadata"] for event in events]
    return [f"{m['extension_type']}:{m['name']}:{m['version']}" for m in metas]


async def test_events_follow_the_dependency_order_whichever_load_ends_first(
    nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path
) -> None:
    # `slow` comes first in the install order but ends last: the events keep the order all the same.
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0", module=slow_module())
    write_extension(root, "taskserv", "quick", "1.0.0")
    write_extension(root, "taskserv", "mid", "1.0.0", dependencies=["quick"])
    write_extension(root, "cluster", "stack", "1.0.0", dependencies=["taskserv:slow", "taskserv:mid"])
    async with running_service(make_config(nats_server.url, tmp_path, roots=[root])):
        client = LoaderClient(nc, timeout=WAIT)
        order = (await client.graph("cluster", "stack"))["order"]
        assert order == ["taskserv:slow:1.0.0", "taskserv:quick:1.0.0", "taskserv:mid:1.0.0", "cluster:stack:1.0.0"]
        ext = await client.load("cluster", "stack", with_dependencies=True)
        assert ext["metadata"]["name"] == "stack"
        assert loaded_keys(await events.wait_for(4, ".loaded")) == order


async def test_independent_dependencies_run_at_the_same_time(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "left", "1.0.0", module=slow_module())
    write_extension(root, "taskserv", "right", "1.0.0", module=slow_module())
    write_extension(root, "cluster", "both", "1.0.0", dependencies=["taskserv:left", "taskserv:right"])
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides={"nushell.max_concurrent": 2})
    async with running_service(config) as service:
        manager = service.manager
        client = LoaderClient(nc, timeout=WAIT)

        async def load() -> None:
            await client.load("cluster", "both", with_dependencies=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            with anyio.fail_after(WAIT):
                await manager.wait_runs(2)
            # Both dependencies' runs have started and neither has ended: one at a time, the second would
            # only start once the first was loaded.
            assert manager.counters.cold == 0
        assert manager.counters.cold == 3
        assert {e["metadata"]["name"] for e in await client.list()} == {"left", "right", "both"}


async def test_a_failed_dependency_fails_the_load_with_the_first_error_in_order(
    nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path
) -> None:
    root = tmp_path / "ext"
    # Both dependencies fail (their modules do not parse), `second` sooner than `first`: the error is `first`'s,
    # as when they were loaded one after the other, and what depends on them is not loaded.
    first = write_extension(root, "taskserv", "first", "1.0.0", module=slow_module() + "export def broken [ {\n")
    write_extension(root, "taskserv", "second", "1.0.0", module="export def broken [ {\n")
    write_extension(root, "taskserv", "fine", "1.0.0")
    write_extension(root, "cluster", "top", "1.0.0", dependencies=["taskserv:first", "taskserv:second"])
    write_extension(root, "cluster", "mixed", "1.0.0", dependencies=["taskserv:fine", "taskserv:second"])
    async with running_service(make_config(nats_server.url, tmp_path, roots=[root])):
        client = LoaderClient(nc, timeout=WAIT)
        with pytest.raises(RemoteError) as info:
            await client.load("cluster", "top", with_dependencies=True)
        assert info.value.code == "invalid_extension"
        assert info.value.details["path"] == str(first)
        assert not (await client.status("cluster", "top"))["loaded"]

        # A dependency before the failing one in the order still loads, as it did one at a time.
        with pytest.raises(RemoteError) as info:
            await client.load("cluster", "mixed", with_dependencies=True)
        assert info.value.code == "invalid_extension"
        assert (await client.status("taskserv", "fine"))["loaded"]
        assert not (await client.status("cluster", "mixed"))["loaded"]
        stats = await client.stats()
        assert stats["loads"]["failed"] == 2


async def test_what_loaded_before_a_dependency_failed_is_announced(
    nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path
) -> None:
    """The contract announces every load that was not answered from the cache: a dependency that loaded is in
    the cache (a later load of it is a hit), so its `extensions.loaded` goes out although the request failed."""
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "fine", "1.0.0")
    write_extension(root, "taskserv", "broken", "1.0.0", module="export def x [] {\n")  # does not parse
    write_extension(root, "cluster", "stack", "1.0.0", dependencies=["taskserv:fine", "taskserv:broken"])
    async with running_service(make_config(nats_server.url, tmp_path, roots=[root])) as service:
        client = LoaderClient(nc, timeout=WAIT)
        with pytest.raises(RemoteError) as failed:
            await client.load("cluster", "stack", with_dependencies=True)
        assert failed.value.code == "invalid_extension"
        assert loaded_keys(await events.wait_for(1, ".loaded")) == ["taskserv:fine:1.0.0"]
        assert [e.metadata.name for e in service.manager.loaded()] == ["fine"]
