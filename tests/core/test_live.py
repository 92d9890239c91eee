"""auto_load and hot reload on real folders, real NATS and real Nushell, waiting on events, never on sleeps."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.serve import auto_load, watch_disk
from service.core.reconcile import Reconciler
from service.wire.service import ExtensionService
from tests.conftest import WAIT, EventLog, make_config, running_service, write_extension

pytestmark = pytest.mark.anyio


@dataclass
class Live:
    root: Path
    service: ExtensionService
    watcher: Reconciler
    client: LoaderClient


@pytest.fixture
async def live(nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path) -> AsyncIterator[Live]:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "app", "1.0.0")
    write_extension(root, "taskserv", "app", "1.1.0")
    write_extension(root, "taskserv", "db", None)  # one-version layout, 1.0.0
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides={"orchestrator.extensions.auto_load": True})
    async with running_service(config) as service, anyio.create_task_group() as tg:
        watcher = await watch_disk(service, tg, debounce_ms=100)
        await auto_load(service)
        await events.wait_for(2, ".loaded")
        yield Live(root, service, watcher, LoaderClient(nc, timeout=WAIT))
        tg.cancel_scope.cancel()


async def test_auto_load_loads_the_latest_of_each(live: Live, events: EventLog) -> None:
    loaded = events.bodies(".loaded")
    assert sorted((e["extension"]["metadata"]["name"], e["extension"]["metadata"]["version"]) for e in loaded) == [
        ("app", "1.1.0"),
        ("db", "1.0.0"),
    ]
    assert {e["reason"] for e in loaded} == {"auto_load"}


async def test_a_changed_extension_is_reloaded(live: Live, events: EventLog) -> None:
    before = await live.client.load("taskserv", "app", "1.1.0")
    written = time.perf_counter()
    (live.root / "taskservs" / "app" / "1.1.0" / "mod.nu").write_text("export def check [] { {ok: false} }\n")
    *_, event = await events.wait_for(3, ".loaded")
    took_ms = (time.perf_counter() - written) * 1000
    assert event["reason"] == "hot_reload" and event["extension"]["metadata"]["version"] == "1.1.0"
    after = await live.client.load("taskserv", "app", "1.1.0")
    assert after["digest"] == event["extension"]["digest"] != before["digest"]
    print(f"change on disk to loaded event: {took_ms:.0f} ms")


async def test_a_new_version_is_loaded_and_a_removed_one_dropped(live: Live, events: EventLog) -> None:
    write_extension(live.root, "taskserv", "app", "1.2.0")
    *_, event = await events.wait_for(3, ".loaded")
    assert (event["reason"], event["extension"]["metadata"]["version"]) == ("auto_load", "1.2.0")

    shutil.rmtree(live.root / "taskservs" / "app" / "1.1.0")
    (gone,) = await events.wait_for(1, ".unloaded")
    assert (gone["reason"], gone["name"], gone["version"]) == ("removed", "app", "1.1.0")
    assert await live.client.status("taskserv", "app") == {"loaded": True, "versions": ["1.2.0"]}

    shutil.rmtree(live.root / "taskservs" / "db")
    *_, gone = await events.wait_for(2, ".unloaded")
    assert (gone["reason"], gone["name"]) == ("removed", "db")


async def test_a_half_written_extension_waits_until_it_is_valid(live: Live, events: EventLog) -> None:
    rounds = live.watcher.reconciled
    folder = write_extension(live.root, "taskserv", "app", "2.0.0", module="export def check [] {\n")  # unfinished
    with anyio.fail_after(WAIT):
        await live.watcher.wait_reconciled(rounds + 1)
    assert len(events.bodies(".loaded")) == 2  # nothing announced for 2.0.0 yet
    (folder / "mod.nu").write_text("export def check [] { {ok: true} }\n")
    *_, event = await events.wait_for(3, ".loaded")
    assert (event["reason"], event["extension"]["metadata"]["version"]) == ("auto_load", "2.0.0")


async def test_a_touch_that_changes_nothing_announces_nothing(live: Live, events: EventLog) -> None:
    rounds = live.watcher.reconciled
    module = live.root / "taskservs" / "app" / "1.1.0" / "mod.nu"
    module.write_text(module.read_text())
    with anyio.fail_after(WAIT):
        await live.watcher.wait_reconciled(rounds + 1)
    assert len(events.bodies(".loaded")) == 2 and events.bodies(".unloaded") == []
