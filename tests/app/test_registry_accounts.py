"""A loader in an account without JetStream, with the registry in another (tests/registry/accounts.py): with
`registry.api_prefix = "$JS.reg.API"` it follows the index, fetches, loads, updates automatically and
announces a yank, with real Nushell, through the read API its account imports; the registry sees pull consumers
only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.publishing import prepare, publish, yank
from service.contract.messages import ExtensionType
from service.registry.buckets import RegistryBuckets
from service.registry.signing import Signer
from service.wire.service import flush_subscriptions
from tests.conftest import (
    WAIT,
    EventLog,
    make_config,
    publish_folder,
    registry_settings,
    running_service,
    set_up_streams,
    write_extension,
)
from tests.registry.accounts import INDEX, PASSWORDS, READER_PREFIX, accounts_server

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def connected(url: str, user: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url, user=user, password=PASSWORDS[user], allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


def source(root: Path, name: str, version: str) -> Path:
    """An extension folder in a publisher's checkout, outside any loader's roots."""
    return write_extension(root / "checkout", "taskserv", name, version)


async def test_a_loader_in_another_account_follows_fetches_and_loads_through_the_imported_api(
    tmp_path: Path, signer: Signer
) -> None:
    (tmp_path / "nats").mkdir()
    empty = tmp_path / "no-tree"
    empty.mkdir()
    loader_settings = {
        **registry_settings(signer.public_key, auto_update=True, api_prefix=READER_PREFIX),
        "nats.user": "loader",
        "nats.password": PASSWORDS["loader"],
    }
    events = EventLog()
    with accounts_server(tmp_path / "nats") as server:
        config = make_config(server.url, tmp_path, roots=[empty], overrides=loader_settings)
        async with (
            connected(server.url, "publisher") as publisher,
            connected(server.url, "orchestrator") as orchestrator,
            connected(server.url, "admin") as admin,
        ):
            for subject in ("extensions.loaded", "extensions.unloaded"):
                await orchestrator.subscribe(subject, cb=events.add)
            await flush_subscriptions(orchestrator)
            await set_up_streams(admin)  # the buckets, as admin makes them in their own account
            publisher_view = make_config(server.url, tmp_path, overrides=registry_settings(signer.public_key))
            await publish_folder(publisher, source(tmp_path / "1", "etcd", "3.5.0"), signer, publisher_view)
            async with running_service(config):
                client = LoaderClient(orchestrator, timeout=WAIT)
                assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.5.0"
                buckets = RegistryBuckets(publisher)
                await buckets.open()
                await publish(buckets, await prepare(source(tmp_path / "2", "etcd", "3.6.0"), signer, config))
                published = (await events.wait_for(2, ".loaded"))[1]
                assert published["reason"] == "published"
                assert published["extension"]["metadata"]["version"] == "3.6.0"
                await yank(buckets, ExtensionType.TASKSERV, "etcd", "3.6.0", signer=signer)
                (unloaded,) = await events.wait_for(1, ".unloaded")
                assert (unloaded["reason"], unloaded["version"]) == ("yanked", "3.6.0")
                stats = (await client.stats())["registry"]
                assert stats["reachable"] is True and stats["fetched"] == 2
                (watching,) = await admin.jsm().consumers_info(INDEX)  # the loader's follower
                assert watching.config.deliver_subject is None
