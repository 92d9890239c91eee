"""The registry's buckets against a real JetStream nats-server: buckets made (by `setup`) and bound,
compare-and-set on the index, the watch (and its restart after the server restarts), archives stored and
fetched, and every way a call can fail (server gone, server stalled, no JetStream, permission refused, an
object that is not whole) ending in one of the registry's errors within the time given, with no file and no
consumer left behind.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy

from service.app.natsserver import NatsCluster, NatsServer
from service.app.setup import Status, set_up
from service.app.stream_settings import registry_targets
from service.registry.archive_bucket import CHUNK_SIZE
from service.registry.buckets import RegistryBuckets
from service.registry.errors import ArchiveTooLarge, Conflict, RegistryUnavailable
from service.registry.index_bucket import CAUGHT_UP, CaughtUp, Update
from service.registry.names import DEFAULT_NAMES, BucketNames
from service.wire.service import flush_subscriptions
from tests.conftest import WAIT, JetStreamServer, lead

from .conftest import Connect

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
INDEX = "KV_extension-index"
ARCHIVES = "OBJ_extension-archives"
KEY = "taskserv.kubernetes"


async def made(
    nc: Client, names: BucketNames = DEFAULT_NAMES, *, replicas: int | None = None, timeout_s: float = 5.0
) -> RegistryBuckets:
    """The buckets as `extension-loader setup` makes them, bound as the publisher and loaders bind them."""
    outcomes = await set_up(nc, registry_targets(names), replicas=replicas)
    assert [o for o in outcomes if o.status is Status.REFUSED] == [], [o.line for o in outcomes]
    buckets = RegistryBuckets(nc, names, timeout_s=timeout_s)
    await buckets.open()
    return buckets


@pytest.fixture
async def buckets(js_nc: Client) -> RegistryBuckets:
    return await made(js_nc)


def archive(size: int, seed: int = 0) -> tuple[str, bytes, str]:
    """(object name, bytes, digest) of `size` random bytes."""
    data = random.Random(seed).randbytes(size)
    hexdigest = hashlib.sha256(data).hexdigest()
    return f"sha256/{hexdigest}", data, f"sha256:{hexdigest}"


async def consumers(nc: Client, stream: str = ARCHIVES) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.consumer_count)


async def first(updates: AsyncGenerator[Update | CaughtUp, None], count: int) -> list[Update | CaughtUp]:
    with anyio.fail_after(WAIT):
        return [await anext(updates) for _ in range(count)]


# --- buckets ------------------------------------------------------------------------------------------------


async def test_setup_makes_both_buckets_to_keep_history_and_never_expire(js_nc: Client) -> None:
    await made(js_nc)
    js = js_nc.jetstream()
    index, archives = await js.stream_info(INDEX), await js.stream_info(ARCHIVES)
    assert index.config.max_msgs_per_subject == 16
    for stream in (index, archives):
        assert not stream.config.max_age, "a ttl would delete records and archives"
        assert stream.config.storage == "file"
    again = await set_up(js_nc, registry_targets(DEFAULT_NAMES))  # run again: binds to them, changes nothing
    assert [o.status for o in again] == [Status.UNCHANGED, Status.UNCHANGED]
    loader = RegistryBuckets(js_nc)
    await loader.open()
    assert await loader.index.get(KEY) == (None, 0)


async def test_buckets_made_with_a_time_to_live_are_said_to_lose_published_versions_until_setup(
    js_nc: Client,
) -> None:
    """Buckets someone made by hand with a ttl would delete what was published: `problems` says so (the publish
    command and the loader warn with it: tests/app/test_cli_registry.py), and setup takes the ttl away, which
    loses nothing."""
    await js_nc.jetstream().create_key_value(bucket="extension-index", ttl=3600)
    await js_nc.jetstream().create_object_store("extension-archives")
    publisher = RegistryBuckets(js_nc)
    await publisher.open()
    problems = await publisher.problems()
    assert len(problems) == 1 and "KV_extension-index" in problems[0] and "ttl" in problems[0]
    assert "extension-loader setup" in problems[0]
    assert await RegistryBuckets(js_nc).problems() == problems
    index, _ = await set_up(js_nc, registry_targets(DEFAULT_NAMES))
    assert index.status is Status.UPDATED and "max_age 3600s -> none" in index.detail, index.line
    assert await RegistryBuckets(js_nc).problems() == []
    fresh = await made(js_nc, BucketNames(index="fresh-index", archives="fresh-archives"))
    assert await fresh.problems() == []


async def test_open_names_every_bucket_that_is_missing(js_nc: Client) -> None:
    with pytest.raises(RegistryUnavailable) as both:
        await RegistryBuckets(js_nc).open()
    assert "'extension-index'" in str(both.value) and "'extension-archives'" in str(both.value)

    assert "extension-loader setup" in str(both.value)

    await set_up(js_nc, registry_targets(BucketNames(index="other-index")))
    with pytest.raises(RegistryUnavailable) as one:
        await RegistryBuckets(js_nc).open()
    assert "'extension-index'" in str(one.value) and "extension-archives" not in str(one.value)


async def test_a_server_without_jetstream_is_named(tmp_path: Path, connect: Connect) -> None:
    with NatsServer(["-a", "127.0.0.1", "-p", "-1"]) as plain:
        client = await connect(plain.url)
        with anyio.fail_after(WAIT), pytest.raises(RegistryUnavailable, match="without JetStream"):
            await RegistryBuckets(client.nc).open()


# --- the index ----------------------------------------------------------------------------------------------


async def test_put_writes_only_over_the_revision_read(buckets: RegistryBuckets) -> None:
    first_revision = await buckets.index.put(KEY, b"one", 0)
    assert await buckets.index.get(KEY) == (b"one", first_revision)
    second = await buckets.index.put(KEY, b"two", first_revision)
    assert second > first_revision
    with pytest.raises(Conflict) as stale:
        await buckets.index.put(KEY, b"late", first_revision)
    assert stale.value.key == KEY and stale.value.revision == first_revision
    with pytest.raises(Conflict):
        await buckets.index.put(KEY, b"again", 0)  # 0: "there is no record", which is no longer true
    assert await buckets.index.get(KEY) == (b"two", second)


async def test_of_two_writers_of_one_revision_exactly_one_wins(js_server: JetStreamServer, connect: Connect) -> None:
    one = await made((await connect(js_server.url)).nc)
    other = RegistryBuckets((await connect(js_server.url)).nc)
    await other.open()
    revision = 0
    for attempt in range(5):
        values = {one: f"one {attempt}".encode(), other: f"other {attempt}".encode()}
        results = await asyncio.gather(
            *(b.index.put(KEY, v, revision) for b, v in values.items()), return_exceptions=True
        )
        won = [r for r in results if isinstance(r, int)]
        lost = [r for r in results if isinstance(r, Conflict)]
        assert len(won) == 1 and len(lost) == 1, results
        value, revision = await one.index.get(KEY)
        assert revision == won[0]
        assert value == list(values.values())[results.index(won[0])]


async def test_a_deleted_key_reads_as_absent_and_can_be_written_anew(buckets: RegistryBuckets, js_nc: Client) -> None:
    written = await buckets.index.put(KEY, b"one", 0)
    await (await js_nc.jetstream().key_value("extension-index")).delete(KEY)
    assert await buckets.index.get(KEY) == (None, 0)
    assert await buckets.index.put(KEY, b"two", 0) > written


@pytest.mark.parametrize("key", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "ä"])
async def test_a_key_nats_py_would_let_time_out_is_refused_before_any_request(
    buckets: RegistryBuckets, key: str
) -> None:
    with anyio.fail_after(1), pytest.raises(ValueError, match="invalid index key"):
        await buckets.index.get(key)


async def test_entries_are_the_current_values(buckets: RegistryBuckets, js_nc: Client) -> None:
    assert await buckets.index.entries() == []
    a = await buckets.index.put("taskserv.a", b"a1", 0)
    await buckets.index.put("taskserv.b", b"b1", 0)
    a = await buckets.index.put("taskserv.a", b"a2", a)
    await (await js_nc.jetstream().key_value("extension-index")).delete("taskserv.b")
    assert await buckets.index.entries() == [Update("taskserv.a", b"a2", a)]


async def test_watch_gives_the_current_values_then_caught_up_then_each_change(
    buckets: RegistryBuckets, js_nc: Client
) -> None:
    a = await buckets.index.put("taskserv.a", b"a1", 0)
    b = await buckets.index.put("taskserv.b", b"b1", 0)
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 3) == [Update("taskserv.a", b"a1", a), Update("taskserv.b", b"b1", b), CAUGHT_UP]
        c = await buckets.index.put("cluster.c", b"c1", 0)
        a = await buckets.index.put("taskserv.a", b"a2", a)
        await (await js_nc.jetstream().key_value("extension-index")).delete("taskserv.b")
        live = await first(updates, 3)
    assert live[:2] == [Update("cluster.c", b"c1", c), Update("taskserv.a", b"a2", a)]
    deleted = live[2]
    assert isinstance(deleted, Update) and deleted.key == "taskserv.b" and deleted.value is None
    assert deleted.revision > a


async def test_watch_of_an_empty_index_is_caught_up_at_once(buckets: RegistryBuckets) -> None:
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 1) == [CAUGHT_UP]


async def test_a_watch_restarted_after_a_server_restart_sees_what_changed_meanwhile(
    js_server: JetStreamServer, connect: Connect
) -> None:
    client = await connect(js_server.url)
    buckets = await made(client.nc)
    a = await buckets.index.put("taskserv.a", b"a1", 0)
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 2) == [Update("taskserv.a", b"a1", a), CAUGHT_UP]
        js_server.stop()
        await client.wait_disconnected()
        with anyio.fail_after(2), pytest.raises(RegistryUnavailable, match="connection to NATS was lost"):
            await anext(updates)

    js_server.start()  # the same port and store
    await client.wait_reconnected()
    b = await buckets.index.put("taskserv.b", b"b1", 0)  # while no watch runs
    a = await buckets.index.put("taskserv.a", b"a2", a)
    # nats-py's own watch, left running across the restart, would resume only ~12 s after the reconnect.
    with anyio.fail_after(3):
        async with aclosing(buckets.index.watch()) as updates:
            assert [await anext(updates) for _ in range(3)] == [
                Update("taskserv.b", b"b1", b),
                Update("taskserv.a", b"a2", a),
                CAUGHT_UP,
            ]
            c = await buckets.index.put("taskserv.c", b"c1", 0)
            assert await anext(updates) == Update("taskserv.c", b"c1", c)


async def test_the_watch_pulls_and_its_consumer_goes_when_it_is_closed(buckets: RegistryBuckets, js_nc: Client) -> None:
    """No push consumer (it would deliver wherever its maker says), no acknowledgements; nothing left behind."""
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 1) == [CAUGHT_UP]
        (watching,) = await js_nc.jsm().consumers_info(INDEX)
        assert watching.config.deliver_subject is None and watching.config.ack_policy == AckPolicy.NONE
    assert await consumers(js_nc, INDEX) == 0


async def test_a_watch_whose_consumer_is_deleted_says_so_and_the_next_sees_what_changed(
    buckets: RegistryBuckets, js_nc: Client
) -> None:
    a = await buckets.index.put("taskserv.a", b"a1", 0)
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 2) == [Update("taskserv.a", b"a1", a), CAUGHT_UP]
        (watching,) = await js_nc.jsm().consumers_info(INDEX)
        assert await js_nc.jsm().delete_consumer(INDEX, watching.name)
        a = await buckets.index.put("taskserv.a", b"a2", a)  # while no watch runs
        with anyio.fail_after(WAIT), pytest.raises(RegistryUnavailable, match="its consumer is gone"):
            await anext(updates)
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 2) == [Update("taskserv.a", b"a2", a), CAUGHT_UP]


async def test_a_change_someone_else_pulled_is_read_again_from_the_last_sequence_seen(
    buckets: RegistryBuckets, js_nc: Client
) -> None:
    """Whoever may pull from the index can take a message off the watch's consumer (a message can also be lost
    on the way): the watch sees its consumer's sequence jump, and a new consumer from the last message it saw
    delivers what it missed, in order and once."""
    async with aclosing(buckets.index.watch()) as updates:
        assert await first(updates, 1) == [CAUGHT_UP]
        (watching,) = await js_nc.jsm().consumers_info(INDEX)
        # Another pull request for one message waits beside the watch's; the server serves them in turn.
        other = await js_nc.subscribe(js_nc.new_inbox())
        request = json.dumps({"batch": 1, "expires": int(WAIT * 1e9)}).encode()
        await js_nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{INDEX}.{watching.name}", request, reply=other.subject)
        with anyio.fail_after(WAIT):
            while (await js_nc.jsm().consumer_info(INDEX, watching.name)).num_waiting < 2:
                await js_nc.flush()  # a round trip, and ask again
        put = [await buckets.index.put(f"taskserv.k{i}", b"k", 0) for i in range(3)]
        taken = await other.next_msg(timeout=WAIT)
        assert taken.subject in [f"$KV.extension-index.taskserv.k{i}" for i in range(3)]
        assert await first(updates, 3) == [Update(f"taskserv.k{i}", b"k", r) for i, r in enumerate(put)]
        last = await buckets.index.put("taskserv.last", b"l", 0)
        assert await first(updates, 1) == [Update("taskserv.last", b"l", last)]
        (now,) = await js_nc.jsm().consumers_info(INDEX)
        assert now.name != watching.name  # the one that skipped a message was deleted


# --- archives -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 10 * 1000 * 1000], ids=["empty", "1 byte", "one chunk", "10 MB"])
async def test_an_archive_comes_back_as_it_was_put(
    buckets: RegistryBuckets, js_nc: Client, tmp_path: Path, size: int
) -> None:
    name, data, digest = archive(size)
    assert await buckets.archives.info(name) is None
    await buckets.archives.put(name, data)
    assert await buckets.archives.info(name) == (size, digest)
    into = tmp_path / "archive.tar.gz"
    assert await buckets.archives.fetch(name, into, max_bytes=size) == digest
    assert into.read_bytes() == data
    assert await consumers(js_nc) == 0


async def test_an_archive_s_chunks_go_on_the_subject_its_digest_names_and_come_back_with_its_metadata(
    buckets: RegistryBuckets, js_nc: Client, tmp_path: Path
) -> None:
    """Put here, the chunks are on `C.<hex of the digest>`, which a fetch asks for alongside the metadata; an
    object of several chunks (read a get at a time) and one of many (read by a consumer) come back whole too."""
    for i, size in enumerate([100, 3 * CHUNK_SIZE, 10 * CHUNK_SIZE]):
        name, data, digest = archive(size, seed=i)
        await buckets.archives.put(name, data)
        assert (await stored_meta(js_nc, name))["nuid"] == name.removeprefix("sha256/")
        into = tmp_path / f"{i}.tar.gz"
        assert await buckets.archives.fetch(name, into, max_bytes=size) == digest
        assert into.read_bytes() == data
    assert await consumers(js_nc) == 0


async def test_a_digest_s_chunk_subject_that_holds_anything_is_not_used_and_not_read(
    buckets: RegistryBuckets, js_nc: Client, tmp_path: Path
) -> None:
    """Something written on an archive's digest subject before it is put (a put cut off half-way, or a writer of
    the bucket that knew the digest ahead): the chunks go on a random subject, and a fetch reads them there, never
    what is on the digest's subject, which it asked for with the metadata."""
    name, data, digest = archive(1000)
    hexdigest = name.removeprefix("sha256/")
    await js_nc.jetstream().publish(f"$O.extension-archives.C.{hexdigest}", b"planted" * 100)
    await buckets.archives.put(name, data)
    assert (await stored_meta(js_nc, name))["nuid"] != hexdigest
    into = tmp_path / "archive.tar.gz"
    assert await buckets.archives.fetch(name, into, max_bytes=MiB) == digest
    assert into.read_bytes() == data


async def test_an_archive_stored_by_nats_py_is_read_where_its_metadata_says(
    buckets: RegistryBuckets, js_nc: Client, tmp_path: Path
) -> None:
    """An object nats-py's ObjectStore.put stored (a random subject for its chunks), with a digest subject that
    holds other bytes: what is read is the object's own."""
    name, data, digest = archive(2 * CHUNK_SIZE + 5)
    other = archive(100, seed=1)[1]
    await js_nc.jetstream().publish(f"$O.extension-archives.C.{name.removeprefix('sha256/')}", other)
    store = await js_nc.jetstream().object_store("extension-archives")
    await store.put(name, data)
    into = tmp_path / "archive.tar.gz"
    assert await buckets.archives.fetch(name, into, max_bytes=2 * MiB) == digest
    assert into.read_bytes() == data


async def stored_meta(nc: Client, name: str) -> dict[str, Any]:
    msg = await nc.jetstream().get_last_msg(
        ARCHIVES, "$O.extension-archives.M." + base64.urlsafe_b64encode(name.encode()).decode()
    )
    meta: dict[str, Any] = json.loads(msg.data or b"")
    return meta


async def test_the_same_archive_put_again_is_not_written_again(buckets: RegistryBuckets, js_nc: Client) -> None:
    name, data, _ = archive(3 * CHUNK_SIZE // 2)
    await buckets.archives.put(name, data)
    written = (await js_nc.jetstream().stream_info(ARCHIVES)).state.last_seq
    await buckets.archives.put(name, data)
    assert (await js_nc.jetstream().stream_info(ARCHIVES)).state.last_seq == written


async def test_a_deleted_archive_is_gone(buckets: RegistryBuckets, tmp_path: Path) -> None:
    name, data, _ = archive(1000)
    await buckets.archives.put(name, data)
    await buckets.archives.delete(name)
    await buckets.archives.delete(name)  # already gone: nothing to do
    assert await buckets.archives.info(name) is None
    into = tmp_path / "archive.tar.gz"
    with pytest.raises(RegistryUnavailable, match="not in bucket 'extension-archives'"):
        await buckets.archives.fetch(name, into, max_bytes=MiB)
    assert not into.exists()


async def test_an_archive_above_the_limit_is_refused_before_it_is_read(
    buckets: RegistryBuckets, js_nc: Client, tmp_path: Path
) -> None:
    name, data, _ = archive(2 * MiB)
    await buckets.archives.put(name, data)
    consumer_requests: list[str] = []

    async def seen(msg: Msg) -> None:
        consumer_requests.append(msg.subject)

    await js_nc.subscribe("$JS.API.CONSUMER.>", cb=seen)
    await flush_subscriptions(js_nc)
    into = tmp_path / "archive.tar.gz"
    with pytest.raises(ArchiveTooLarge) as refused:
        await buckets.archives.fetch(name, into, max_bytes=2 * MiB - 1)
    assert (refused.value.size, refused.value.limit, refused.value.announced) == (2 * MiB, 2 * MiB - 1, False)
    await js_nc.flush()  # a request this client sent would have come back to the subscription before the PONG
    assert consumer_requests == []
    assert not into.exists()


async def publish_meta(nc: Client, name: str, **fields: Any) -> None:
    """Writes an object's metadata by hand, as a careless or hostile writer of the bucket could."""
    subject = "$O.extension-archives.M." + base64.urlsafe_b64encode(name.encode()).decode()
    body = json.dumps({"name": name, "bucket": "extension-archives", **fields}).encode()
    await nc.jetstream().publish(subject, body, headers={"Nats-Rollup": "sub"})


@pytest.fixture
async def real_chunks(buckets: RegistryBuckets, js_nc: Client) -> dict[str, Any]:
    """The metadata of a stored object of three chunks (1.5 MiB), whose chunks other metadata can point at."""
    name, data, _ = archive(3 * CHUNK_SIZE)
    await buckets.archives.put(name, data)
    return await stored_meta(js_nc, name)


@pytest.mark.parametrize(
    ("announced", "error", "match"),
    [
        ({"size": MiB, "chunks": 3}, ArchiveTooLarge, "more than the 1048576 its metadata announces"),
        ({"size": 4 * CHUNK_SIZE, "chunks": 4}, RegistryUnavailable, "3 of its 4 chunks"),
        ({"size": 4 * CHUNK_SIZE, "chunks": 3}, RegistryUnavailable, f"{3 * CHUNK_SIZE} of its {4 * CHUNK_SIZE} bytes"),
    ],
    ids=["more bytes than announced", "fewer chunks", "fewer bytes"],
)
async def test_an_object_unlike_its_metadata_is_refused_and_leaves_nothing(
    buckets: RegistryBuckets,
    js_nc: Client,
    tmp_path: Path,
    real_chunks: dict[str, Any],
    announced: dict[str, int],
    error: type[Exception],
    match: str,
) -> None:
    await publish_meta(js_nc, "sha256/forged", nuid=real_chunks["nuid"], digest=real_chunks["digest"], **announced)
    into = tmp_path / "archive.tar.gz"
    with pytest.raises(error, match=match):
        await buckets.archives.fetch("sha256/forged", into, max_bytes=10 * MiB)
    assert not into.exists()
    assert await consumers(js_nc) == 0


async def test_a_file_that_is_there_already_is_left_alone(buckets: RegistryBuckets, tmp_path: Path) -> None:
    name, data, _ = archive(10)
    await buckets.archives.put(name, data)
    into = tmp_path / "archive.tar.gz"
    into.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        await buckets.archives.fetch(name, into, max_bytes=MiB)
    assert into.read_bytes() == b"someone else's"


# --- failures, bounded --------------------------------------------------------------------------------------


async def test_every_call_fails_at_once_while_the_server_is_down(
    js_server: JetStreamServer, connect: Connect, tmp_path: Path
) -> None:
    client = await connect(js_server.url)
    buckets = await made(client.nc, timeout_s=10.0)
    await buckets.index.put(KEY, b"one", 0)
    name, data, _ = archive(1000)
    await buckets.archives.put(name, data)
    js_server.stop()
    await client.wait_disconnected()

    async def watch() -> None:
        async with aclosing(buckets.index.watch()) as updates:
            await anext(updates)

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "open": lambda: buckets.open(),
        "index.get": lambda: buckets.index.get(KEY),
        "index.put": lambda: buckets.index.put(KEY, b"two", 1),
        "index.entries": lambda: buckets.index.entries(),
        "index.watch": watch,
        "archives.info": lambda: buckets.archives.info(name),
        "archives.put": lambda: buckets.archives.put(name, data),
        "archives.fetch": lambda: buckets.archives.fetch(name, tmp_path / "a.tar.gz", max_bytes=MiB),
        "archives.delete": lambda: buckets.archives.delete(name),
    }
    for call in calls.values():
        # A tenth of the time-out the buckets were given: no call waits it out.
        with anyio.fail_after(buckets.timeout_s / 10), pytest.raises(RegistryUnavailable, match="not connected"):
            await call()
    assert not (tmp_path / "a.tar.gz").exists()


async def test_a_server_that_does_not_answer_is_given_up_after_the_time_out(
    js_server: JetStreamServer, connect: Connect
) -> None:
    client = await connect(js_server.url)
    buckets = await made(client.nc, timeout_s=0.5)
    js_server.pause()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: buckets.index.get(KEY),
        lambda: buckets.index.put(KEY, b"one", 0),
        lambda: buckets.archives.info("sha256/x"),
    ]
    for call in calls:
        with anyio.fail_after(buckets.timeout_s + 1), pytest.raises(RegistryUnavailable, match="did not answer within"):
            await call()
    assert client.nc.is_connected


async def test_a_fetch_cut_off_by_the_server_going_away_fails_and_leaves_no_file(
    js_server: JetStreamServer, connect: Connect, tmp_path: Path
) -> None:
    client = await connect(js_server.url)
    buckets = await made(client.nc)
    name, data, _ = archive(48 * MiB)
    await buckets.archives.put(name, data)
    # Another client sees the fetch's pull requests (8 MiB each); the server dies after the second.
    observer = await connect(js_server.url)
    pulls = 0
    second_pull = anyio.Event()

    async def pulled(msg: Msg) -> None:
        nonlocal pulls
        pulls += 1
        if pulls == 2:
            second_pull.set()

    await observer.nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{ARCHIVES}.*", cb=pulled)
    await flush_subscriptions(observer.nc)

    async def kill_after_second_pull() -> None:
        await second_pull.wait()
        js_server.kill()

    into = tmp_path / "archive.tar.gz"
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_after_second_pull)
            with pytest.raises(RegistryUnavailable, match="connection to NATS was lost"):
                await buckets.archives.fetch(name, into, max_bytes=len(data))
    assert not into.exists()


PERMISSIONS = """
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{user: publisher, password: publisher1}}
    {{user: loader, password: loader1, permissions: {{
      publish: {{allow: [{allowed}]}}
      subscribe: {{allow: ["_INBOX.>"]}}
    }}}}
  ]
}}
"""


def loader_subjects(stream: str) -> list[str]:
    """What a read-only loader needs of one bucket's stream (REGISTRY-NOTES, plus deleting its consumer)."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


async def test_a_read_only_loader_reads_and_is_told_that_writing_is_refused(tmp_path: Path, connect: Connect) -> None:
    allowed = ", ".join(json.dumps(s) for s in [*loader_subjects(INDEX), *loader_subjects(ARCHIVES)])
    conf = tmp_path / "nats.conf"
    conf.write_text(PERMISSIONS.format(store=tmp_path / "jetstream", allowed=allowed))
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        publisher_nc = (await connect(server.url, user="publisher", password="publisher1")).nc
        publisher = await made(publisher_nc)
        revision = await publisher.index.put(KEY, b"record", 0)
        name, data, digest = archive(CHUNK_SIZE + 1)
        await publisher.archives.put(name, data)

        loader_nc = (await connect(server.url, user="loader", password="loader1")).nc
        loader = RegistryBuckets(loader_nc, timeout_s=1.0)
        await loader.open()
        assert await loader.index.get(KEY) == (b"record", revision)
        assert await loader.index.entries() == [Update(KEY, b"record", revision)]
        assert await loader.archives.info(name) == (len(data), digest)
        assert await loader.archives.fetch(name, tmp_path / "a.tar.gz", max_bytes=MiB) == digest
        assert await consumers(publisher_nc) == 0

        writes: list[Callable[[], Awaitable[object]]] = [
            lambda: loader.index.put(KEY, b"forged", revision),
            lambda: loader.archives.put("sha256/forged", b"forged"),
        ]
        for write in writes:
            with anyio.fail_after(loader.timeout_s + 2), pytest.raises(RegistryUnavailable, match="refused permission"):
                await write()


NO_PURGE = """
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{user: admin, password: admin1}}
    {{user: publisher, password: publisher1, permissions: {{
      publish: {{deny: [
        "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>"
      ]}}
      subscribe: {{allow: ["_INBOX.>"]}}
    }}}}
  ]
}}
"""


async def test_archives_are_put_replaced_and_deleted_by_a_publisher_that_may_not_purge(
    tmp_path: Path, connect: Connect
) -> None:
    """nats-py's Object Store purges the chunks of an object it replaces or deletes; the publisher may not
    (only admin may manage streams). Every archive write goes through without a purge: the chunks of what is
    replaced or deleted are rolled up into one empty message, and nothing is refused."""
    conf = tmp_path / "nats.conf"
    conf.write_text(NO_PURGE.format(store=tmp_path / "jetstream"))
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        await made((await connect(server.url, user="admin", password="admin1")).nc)
        refusals: list[str] = []

        async def refused(exc: Exception) -> None:
            refusals.append(str(exc))

        publisher_nc = await nats.connect(
            server.url, user="publisher", password="publisher1", error_cb=refused, allow_reconnect=False
        )
        try:
            publisher = RegistryBuckets(publisher_nc, timeout_s=2.0)
            await publisher.open()
            name, data, digest = archive(3 * CHUNK_SIZE // 2)
            await publisher.archives.put(name, data)
            await publisher.archives.put(name, data)  # there already: not put again
            state = (await publisher_nc.jetstream().stream_info(ARCHIVES)).state
            assert (state.messages, state.last_seq) == (3, 3)  # two chunks and the metadata

            _, other, other_digest = archive(CHUNK_SIZE // 2, seed=1)
            await publisher.archives.put(name, other)  # other bytes under that name: replaced
            assert await publisher.archives.info(name) == (len(other), other_digest)
            into = tmp_path / "replaced"
            assert await publisher.archives.fetch(name, into, max_bytes=MiB) == other_digest
            assert into.read_bytes() == other
            state = (await publisher_nc.jetstream().stream_info(ARCHIVES)).state
            assert state.messages == 3  # its chunk, its metadata, and the old chunks rolled up into one message

            await publisher.archives.delete(name)
            assert await publisher.archives.info(name) is None
            state = (await publisher_nc.jetstream().stream_info(ARCHIVES)).state
            assert state.messages == 3  # the metadata says deleted, both chunk subjects hold one empty message
            await publisher_nc.flush()
            assert refusals == []
            assert digest != other_digest
        finally:
            await publisher_nc.close()


# --- a cluster ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def cluster_client(cluster: NatsCluster, node: int) -> AsyncIterator[Client]:
    """A client of one node of the cluster, which stays on it."""
    nc = await nats.connect(cluster.servers[node].url, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


async def published_r3(cluster: NatsCluster, node: int) -> tuple[str, str]:
    """Both buckets made with three copies through `node`, a key written and an archive stored: (name, digest).
    Returns once every copy is current (a copy still being made has no one to answer a direct read yet)."""
    name, data, digest = archive(3 * CHUNK_SIZE // 2)
    async with cluster_client(cluster, node) as nc:
        publisher = await made(nc, replicas=3)
        await publisher.index.put(KEY, b"v1", 0)
        await publisher.archives.put(name, data)
    await anyio.to_thread.run_sync(cluster.wait_settled, (INDEX, ARCHIVES))
    return name, digest


async def test_every_node_of_a_cluster_serves_every_fetch(js_cluster: NatsCluster, tmp_path: Path) -> None:
    """The fetch's consumer is on any of the stream's nodes; the node a loader is on may not know of it yet when
    the first request for chunks comes (status 503, no one took it). That is asked again, not taken for an
    archive that is not whole."""
    name, digest = await published_r3(js_cluster, 0)
    for node in range(3):
        async with cluster_client(js_cluster, node) as nc:
            loader = RegistryBuckets(nc)
            await loader.open()
            for i in range(30):
                assert await loader.archives.fetch(name, tmp_path / f"{node}-{i}", max_bytes=MiB) == digest


async def test_buckets_open_while_the_cluster_elects_the_leaders_of_a_stopped_node(
    js_cluster: NatsCluster, tmp_path: Path
) -> None:
    """A request sent while the cluster elects new leaders is dropped, not answered: sent once, it would wait
    out the whole time-out and fail. The binds are asked again until JetStream answers."""
    await published_r3(js_cluster, 0)
    await lead(js_cluster, 1, (INDEX, ARCHIVES))
    async with cluster_client(js_cluster, 0) as nc:
        await anyio.to_thread.run_sync(js_cluster.servers[1].stop)  # not waiting for the cluster to settle
        loader = RegistryBuckets(nc)
        await loader.open()
        assert await loader.index.get(KEY) == (b"v1", 1)


async def test_a_watch_whose_consumer_s_node_stops_says_so_while_the_connection_holds(
    js_cluster: NatsCluster,
) -> None:
    """nats-py's ordered consumer would go quiet for 10 to 20 s; the watch raises, and a new one carries on."""
    await published_r3(js_cluster, 0)
    async with cluster_client(js_cluster, 2) as nc:
        loader = RegistryBuckets(nc)
        await loader.open()
        # The server puts the watch's consumer on one of the three nodes at random: watch again (ten times at
        # most) until it is on another node than this client's.
        for _ in range(10):
            async with aclosing(loader.index.watch()) as updates:
                assert await first(updates, 2) == [Update(KEY, b"v1", 1), CAUGHT_UP]
                (watching,) = await nc.jsm().consumers_info(INDEX)  # the watch's pull consumer, the only one
                assert watching.cluster is not None and watching.cluster.leader is not None
                node = js_cluster.names.index(watching.cluster.leader)
                if node == 2:
                    continue
                await anyio.to_thread.run_sync(js_cluster.stop_node, node)
                with anyio.fail_after(WAIT), pytest.raises(RegistryUnavailable, match="its consumer is gone"):
                    await anext(updates)
                break
        else:
            pytest.fail("the watch's consumer was on the client's own node ten times in a row")
        assert nc.is_connected and nc.stats["reconnects"] == 0
        async with aclosing(loader.index.watch()) as updates:
            assert await first(updates, 2) == [Update(KEY, b"v1", 1), CAUGHT_UP]
