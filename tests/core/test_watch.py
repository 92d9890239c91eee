"""The watch of the extension roots apart from auto_load (`orchestrator.extensions.watch`), on real folders, real
NATS and real Nushell, waiting on the watcher's rounds, never on sleeps.

With the watch and without auto_load, a change only makes the store read that extension again: discover sees
it, nothing cached is reloaded or dropped and no event is published. Without the watch, there is no watcher at
all and the store checks the folders' times itself, as it always did.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.serve import run, watch_disk
from service.wire.service import ExtensionService
from tests.conftest import WAIT, EventLog, make_config, running_service, write_extension

pytestmark = pytest.mark.anyio


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "app", "1.0.0")
    write_extension(root, "taskserv", "db", None)  # one-version layout, 1.0.0
    return root


def versions(listing: list[dict[str, Any]], name: str) -> list[str]:
    return next(a["versions"] for a in listing if a["name"] == name)


def inotify_instances() -> int:
    """How many inotify instances this process holds: one per watcher in place."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with suppress(OSError):  # the listing's own descriptor, closed by now
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


@contextmanager
def stats_under(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every `os.stat` and `os.scandir` of a path under `root` made meanwhile (the store's reads of the tree)."""
    seen: list[str] = []
    prefix = str(root)

    def recording(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(path).startswith(prefix):
                seen.append(os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        patch.setattr(os, "stat", recording(os.stat))
        patch.setattr(os, "scandir", recording(os.scandir))
        yield seen


@asynccontextmanager
async def serving(service: ExtensionService) -> AsyncIterator[None]:
    """`run` as `serve` runs it (the watcher and auto_load as configured), until the block ends."""
    ready = anyio.Event()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(service, stop, on_ready=lambda _: ready.set()))
        with anyio.fail_after(WAIT):
            await ready.wait()
        yield
        stop.set()


async def test_without_auto_load_a_change_is_discovered_but_nothing_is_reloaded(
    nats_server: NatsServer, nc: Client, events: EventLog, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    config = make_config(nats_server.url, tmp_path, roots=[root])
    assert config.orchestrator.extensions.watch and not config.orchestrator.extensions.auto_load
    async with running_service(config) as service, anyio.create_task_group() as tg:
        watcher = await watch_disk(service, tg, debounce_ms=100)
        client = LoaderClient(nc, timeout=WAIT)
        before = await client.load("taskserv", "app", "1.0.0")
        await events.wait_for(1, ".loaded")
        assert versions(await client.discover("taskserv"), "app") == ["1.0.0"]

        rounds = watcher.reconciled
        (root / "taskservs" / "app" / "1.0.0" / "mod.nu").write_text("export def check [] { {ok: false} }\n")
        write_extension(root, "taskserv", "app", "1.1.0")
        with anyio.fail_after(WAIT):
            await watcher.wait_reconciled(rounds + 1)

        assert versions(await client.discover("taskserv"), "app") == ["1.1.0", "1.0.0"]
        assert await client.status("taskserv", "app") == {"loaded": True, "versions": ["1.0.0"]}
        after = await client.load("taskserv", "app", "1.0.0")  # still the copy loaded before the change
        assert after["digest"] == before["digest"]
        assert service.publisher.published == 1  # the load's own event, nothing since
        assert [e["reason"] for e in events.bodies(".loaded")] == ["load"] and events.bodies(".unloaded") == []
        tg.cancel_scope.cancel()


async def test_with_the_watch_a_repeated_discover_reads_nothing_from_disk(
    nats_server: NatsServer, nc: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path)
    config = make_config(nats_server.url, tmp_path, roots=[root])
    instances = inotify_instances()
    async with running_service(config) as service, serving(service):
        assert service.manager.store.watched is True
        assert inotify_instances() == instances + 1
        client = LoaderClient(nc, timeout=WAIT)
        first = await client.discover()
        with stats_under(root, monkeypatch) as seen:
            again = await client.discover()
        assert again == first and seen == []
    assert service.manager.store.watched is False  # stopped: no one tells the store of changes any more


async def test_without_the_watch_the_store_checks_the_disk_itself(
    nats_server: NatsServer, nc: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path)
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides={"orchestrator.extensions.watch": False})
    instances = inotify_instances()
    async with running_service(config) as service, serving(service):
        assert service.manager.store.watched is False
        assert inotify_instances() == instances  # no watcher at all
        client = LoaderClient(nc, timeout=WAIT)
        assert versions(await client.discover("taskserv"), "app") == ["1.0.0"]
        with stats_under(root, monkeypatch) as seen:
            await client.discover("taskserv")
        assert {str(root / "taskservs" / "app"), str(root / "taskservs" / "db")} <= set(seen)
        write_extension(root, "taskserv", "app", "1.1.0")
        assert versions(await client.discover("taskserv"), "app") == ["1.1.0", "1.0.0"]  # at once
