"""The registry read from another account than its buckets', through the read API that account imports under
`$JS.reg.API` (`accounts.py`): buckets bound, the index read, watched and listed, archives described and
fetched, with direct gets and pull consumers only; no consumer delivers anywhere, and every consumer a reader
makes is gone when it is done. A watch whose consumer is deleted says so, and a new one sees what changed.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy

from service.registry.archive_bucket import CHUNK_SIZE
from service.registry.buckets import RegistryBuckets
from service.registry.errors import RegistryUnavailable
from service.registry.index_bucket import CAUGHT_UP, Update
from service.wire.service import flush_subscriptions
from tests.conftest import WAIT, set_up_streams

from .accounts import ARCHIVES, INDEX, PASSWORDS, READER_PREFIX, accounts_server
from .conftest import Connect
from .test_buckets import first

pytestmark = pytest.mark.anyio


def archive(size: int, seed: int) -> tuple[str, bytes, str]:
    data = random.Random(seed).randbytes(size)
    hexdigest = hashlib.sha256(data).hexdigest()
    return f"sha256/{hexdigest}", data, f"sha256:{hexdigest}"


async def login(connect: Connect, url: str, user: str) -> Client:
    return (await connect(url, user=user, password=PASSWORDS[user])).nc


async def consumer_count(admin: Client, stream: str) -> int:
    return int((await admin.jetstream().stream_info(stream)).state.consumer_count)


class Creates:
    """Every consumer creation REG receives, as `admin` (in REG) sees the requests come in."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []
        self.subjects: list[str] = []

    async def add(self, msg: Msg) -> None:
        self.subjects.append(msg.subject)
        self.configs.append(msgspec.json.decode(msg.data)["config"])


async def test_a_reader_in_another_account_reads_all_of_the_registry_with_pull_consumers_only(
    tmp_path: Path, connect: Connect
) -> None:
    with accounts_server(tmp_path) as server:
        admin = await login(connect, server.url, "admin")
        creates = Creates()
        await admin.subscribe("$JS.API.CONSUMER.CREATE.>", cb=creates.add)
        await flush_subscriptions(admin)

        publisher = RegistryBuckets(await login(connect, server.url, "publisher"))
        await set_up_streams(admin)
        await publisher.open()
        a = await publisher.index.put("taskserv.a", b"a1", 0)
        small = archive(1000, seed=1)  # one chunk: read a get at a time
        large = archive(6 * CHUNK_SIZE + 1, seed=2)  # seven chunks: read with a pull consumer
        for name, data, _ in (small, large):
            await publisher.archives.put(name, data)

        loader = RegistryBuckets(await login(connect, server.url, "loader"), api_prefix=READER_PREFIX)
        await loader.open()
        assert await loader.index.get("taskserv.a") == (b"a1", a)
        async with aclosing(loader.index.watch()) as updates:
            assert await first(updates, 2) == [Update("taskserv.a", b"a1", a), CAUGHT_UP]
            (watching,) = await admin.jsm().consumers_info(INDEX)
            assert watching.config.deliver_subject is None and watching.config.ack_policy == AckPolicy.NONE
            b = await publisher.index.put("taskserv.b", b"b1", 0)
            a = await publisher.index.put("taskserv.a", b"a2", a)
            assert await first(updates, 2) == [Update("taskserv.b", b"b1", b), Update("taskserv.a", b"a2", a)]
        assert await consumer_count(admin, INDEX) == 0  # the watch's, deleted as it closed
        assert await loader.index.entries() == [Update("taskserv.b", b"b1", b), Update("taskserv.a", b"a2", a)]
        assert await consumer_count(admin, INDEX) == 0

        for name, data, digest in (small, large):
            assert await loader.archives.info(name) == (len(data), digest)
            into = tmp_path / f"{digest.removeprefix('sha256:')}.tar.gz"
            assert await loader.archives.fetch(name, into, max_bytes=len(data)) == digest
            assert into.read_bytes() == data
        assert await consumer_count(admin, ARCHIVES) == 0

        await admin.flush()  # the requests came to admin before the answer to its PING
        made = [s.removeprefix("$JS.API.CONSUMER.CREATE.").split(".")[0] for s in creates.subjects]
        assert made == [INDEX, INDEX, ARCHIVES]  # the watch, `entries`, and the large archive's fetch
        for config in creates.configs:
            assert "deliver_subject" not in config and config["ack_policy"] == "none"


async def test_a_watch_whose_consumer_is_deleted_says_so_and_a_new_one_sees_what_changed(
    tmp_path: Path, connect: Connect
) -> None:
    """Whoever deletes the consumer (the server after a restart, an administrator, another reader of the
    index): the watch ends at once, and the next one reads what changed meanwhile."""
    with accounts_server(tmp_path) as server:
        admin = await login(connect, server.url, "admin")
        publisher = RegistryBuckets(await login(connect, server.url, "publisher"))
        await set_up_streams(admin)
        await publisher.open()
        a = await publisher.index.put("taskserv.a", b"a1", 0)
        loader = RegistryBuckets(await login(connect, server.url, "loader"), api_prefix=READER_PREFIX)
        await loader.open()
        async with aclosing(loader.index.watch()) as updates:
            assert await first(updates, 2) == [Update("taskserv.a", b"a1", a), CAUGHT_UP]
            (watching,) = await admin.jsm().consumers_info(INDEX)
            assert await admin.jsm().delete_consumer(INDEX, watching.name)
            b = await publisher.index.put("taskserv.b", b"b1", 0)  # while no watch runs
            with anyio.fail_after(WAIT), pytest.raises(RegistryUnavailable, match="its consumer is gone"):
                await anext(updates)
        async with aclosing(loader.index.watch()) as updates:
            assert await first(updates, 3) == [
                Update("taskserv.a", b"a1", a),
                Update("taskserv.b", b"b1", b),
                CAUGHT_UP,
            ]
            c = await publisher.index.put("taskserv.c", b"c1", 0)
            assert await first(updates, 1) == [Update("taskserv.c", b"c1", c)]
        assert await consumer_count(admin, INDEX) == 0
