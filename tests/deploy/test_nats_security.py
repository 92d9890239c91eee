"""Who may do what on NATS: the users and permissions of the repo's own nats.conf, against a real nats-server.

The server runs nats.conf as it is, with test passwords in its environment; `-p -1 -m -1` move its client and
monitoring ports to free ones, and its JetStream store (`./data/jetstream`) lands in the test's folder, the
server's working folder (`-sd` cannot replace a store_dir that the file sets). The matrix test tries every
action as every user and reads the outcome from the wire: an allowed action shows its effect (a reply, a
message received, a record read back), a refused one a "Permissions Violation" for the client (nats-py's error
callback) and in the server's log. A refused JetStream write also leaves the client waiting for an
acknowledgement that never comes: the test takes the violation as the answer instead of waiting that out.
Nothing waits for a fixed time.

Every client connects with its user's inbox prefix (`_INBOX.<user>`), the only inbox nats.conf lets it read.
The registry's rows run against its two buckets as the publisher makes them: the Key-Value index (allowing
direct gets, as buckets made by nats.go or the `nats` CLI do) and the Object Store of archives.

The TLS tests make their own certificate authority and certificates with the openssl command.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from hashlib import sha256
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, ObjectMeta, ObjectMetaOptions, StreamConfig
from nats.js.errors import KeyNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from service.app.cli.serving import DEV_PASSWORDS
from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.publishing import prepare, publish, yank
from service.app.setup import set_up
from service.app.stream_settings import registry_targets
from service.contract.config import ENV_PREFIX, Config, inbox_prefix_for
from service.contract.messages import ExtensionType
from service.registry.buckets import RegistryBuckets
from service.registry.names import DEFAULT_NAMES
from service.registry.signing import Signer
from service.wire.connection import ConnectRefused
from service.wire.events import EventStreamError
from service.wire.micro import SERVICE_NAME
from service.wire.service import ExtensionService, flush_subscriptions
from tests.conftest import (
    EXAMPLES,
    NU,
    WAIT,
    EventLog,
    make_config,
    registry_settings,
    running_service,
    write_extension,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
NATS_CONF = ROOT / "nats.conf"
PASSWORDS = {
    "orchestrator": "testOrchestrator1",
    "loader": "testLoader1",
    "observer": "testObserver1",
    "publisher": "testPublisher1",
}
VARIABLES = {
    "orchestrator": "NATS_ORCHESTRATOR_PASSWORD",
    "loader": "NATS_LOADER_PASSWORD",
    "observer": "NATS_OBSERVER_PASSWORD",
    "publisher": "NATS_PUBLISHER_PASSWORD",
}
ANONYMOUS = "anonymous"  # no credentials at all: nats.conf's no_auth_user (orchestrator)
USERS = ("orchestrator", ANONYMOUS, "loader", "observer", "publisher")
STREAM = "EXTENSION_EVENTS"
# The registry's buckets, as nats.conf names them.
INDEX, ARCHIVES = "extension-index", "extension-archives"
INDEX_STREAM, ARCHIVES_STREAM = f"KV_{INDEX}", f"OBJ_{ARCHIVES}"
CHUNK = 512 * 1024
RECORD_KEY = "taskserv.etcd"
LARGE_VALUE = 900_000  # bytes of one large index record: three of them make the server ask for flow control


def server_environment() -> dict[str, str]:
    return {**os.environ, **{VARIABLES[user]: password for user, password in PASSWORDS.items()}}


def start_server(tmp_path: Path, conf: Path = NATS_CONF) -> NatsServer:
    return NatsServer(["-c", str(conf), "-p", "-1", "-m", "-1"], cwd=tmp_path, env=server_environment()).start()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def loader_config(url: str, tmp_path: Path, **overrides: Any) -> Config:
    """The service's configuration as the `loader` user of nats.conf."""
    return make_config(
        url,
        tmp_path,
        overrides={"nats.user": "loader", "nats.password": PASSWORDS["loader"], **overrides},
    )


async def wait_for_log(server: NatsServer, text: str, count: int = 1) -> None:
    await anyio.to_thread.run_sync(partial(server.wait_for_log, text, count, WAIT))


async def log_barrier(server: NatsServer) -> None:
    """Returns once every line the server logged before now is in `server.log`.

    A connection commits a violation of its own and waits until the server has logged it: whatever the server
    had done before, it had logged before that line.
    """
    async with connect(server.url, "observer") as canary:
        await canary.nc.publish("log.barrier", b"")
        await flush_subscriptions(canary.nc)
        assert canary.violations
    await wait_for_log(server, 'Subject "log.barrier"')


# --- a connection that notices its refusals -------------------------------------------------------------------


@dataclass
class Conn:
    user: str
    nc: Client
    violations: list[str] = field(default_factory=list)
    refused: anyio.Event = field(default_factory=anyio.Event)


def inbox(user: str) -> str:
    """The inbox prefix nats.conf gives `user` (anonymous: the no_auth_user's)."""
    return inbox_prefix_for(None if user == ANONYMOUS else user)


@asynccontextmanager
async def connect(url: str, user: str, password: str | None = None, **options: Any) -> AsyncIterator[Conn]:
    """A connection as `user` (ANONYMOUS: without credentials) that records the permission violations it gets;
    its replies arrive under the user's inbox prefix unless `inbox_prefix` says otherwise."""
    options.setdefault("inbox_prefix", inbox(user))
    nc = Client()
    conn = Conn(user, nc)

    async def on_error(exc: Exception) -> None:
        # nats-py hands a permissions violation (the server's -ERR) to the error callback, connection kept.
        if "permissions violation" in str(exc).lower():
            conn.violations.append(str(exc))
            conn.refused.set()

    credentials: dict[str, Any] = {} if user == ANONYMOUS else {"user": user, "password": password or PASSWORDS[user]}
    try:
        await nc.connect(
            url,
            name=f"test-{user}",
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=5,
            error_cb=on_error,
            **credentials,
            **options,
        )
    except BaseException:
        await nc.close()  # nats-py leaves the socket of a refused connection open
        raise
    try:
        yield conn
    finally:
        await nc.close()


async def attempt(who: Conn, action: Callable[[], Awaitable[None]]) -> str:
    """Runs the action: "allowed" when it shows its effect, "refused" when the server refuses a step of it."""
    outcome = ""
    with anyio.fail_after(2 * WAIT):
        async with anyio.create_task_group() as tg:

            async def act() -> None:
                nonlocal outcome
                try:
                    await action()
                except Exception:
                    # A refused action may fail too (no responders, a time-out): then the refusal must show.
                    with anyio.move_on_after(WAIT):
                        await who.refused.wait()
                    if not who.refused.is_set():
                        raise
                    return
                outcome = outcome or "allowed"
                tg.cancel_scope.cancel()

            async def refusal() -> None:
                nonlocal outcome
                await who.refused.wait()
                outcome = outcome or "refused"
                tg.cancel_scope.cancel()

            tg.start_soon(act)
            tg.start_soon(refusal)
    if outcome == "allowed" and not who.nc.is_closed:
        await flush_subscriptions(who.nc)  # any refusal of a step on the way has arrived by now
        if who.violations:
            return f"allowed, but also refused: {who.violations}"
    return outcome


# --- the actions of the matrix ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """The registry's buckets as the publisher left them: one index record, one archive of three chunks."""

    archive: bytes
    name: str  # the archive's object name


@dataclass
class World:
    """What an action needs besides the acting connection: helper connections of each user, the service, the
    registry's buckets."""

    server: NatsServer
    helpers: dict[str, Conn]
    service: ExtensionService | None
    registry: Registry | None = None


Action = Callable[[World, Conn], Awaitable[None]]


async def request(world: World, who: Conn) -> None:
    """Send a request (extensions.stats) and get the service's reply."""
    assert world.service is not None
    stats = await LoaderClient(who.nc, timeout=WAIT).stats()
    assert stats["instance_id"] == world.service.identity.id


async def fleet_request(world: World, who: Conn) -> None:
    """Ask every instance (extensions.all.stats) and get the service's reply."""
    assert world.service is not None
    gathered = await LoaderClient(who.nc, timeout=WAIT).gather("stats", replies=1)
    assert [answer["instance_id"] for answer in gathered.answers] == [world.service.identity.id]


async def _srv(verb: str, world: World, who: Conn) -> None:
    assert world.service is not None
    msg = await who.nc.request(f"$SRV.{verb}.{SERVICE_NAME}", b"", timeout=WAIT)
    reply = msgspec.json.decode(msg.data)
    assert reply["type"] == f"io.nats.micro.v1.{verb.lower()}_response" and reply["id"] == world.service.identity.id


async def srv_ping(world: World, who: Conn) -> None:
    """`$SRV.PING.extension-loader` (nats micro ls), and read the reply."""
    await _srv("PING", world, who)


async def srv_stats(world: World, who: Conn) -> None:
    """`$SRV.STATS.extension-loader` (nats micro stats), and read the reply."""
    await _srv("STATS", world, who)


async def _receive_one(sub_conn: Conn, subject: str, send: Callable[[], Awaitable[None]], **sub: Any) -> Msg:
    received = anyio.Event()
    got: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg)
        received.set()

    await sub_conn.nc.subscribe(subject, cb=on_msg, **sub)
    await flush_subscriptions(sub_conn.nc)
    await send()
    await received.wait()
    return got[0]


async def publish_event(world: World, who: Conn) -> None:
    """Publish on extensions.loaded; another client (observer) receives it."""
    msg = await _receive_one(
        world.helpers["observer"], "extensions.loaded", partial(who.nc.publish, "extensions.loaded", b"forged")
    )
    assert msg.data == b"forged"


async def subscribe_event(world: World, who: Conn) -> None:
    """Subscribe to extensions.loaded and receive an event that the loader publishes."""
    loader = world.helpers["loader"]
    msg = await _receive_one(who, "extensions.loaded", partial(loader.nc.publish, "extensions.loaded", b"event"))
    assert msg.data == b"event"


async def _serve_status(world: World, who: Conn, queue: str) -> None:
    async def answer(msg: Msg) -> None:
        await msg.respond(b"answered")

    await who.nc.subscribe("extensions.status", queue=queue, cb=answer)
    await flush_subscriptions(who.nc)
    reply = await world.helpers["orchestrator"].nc.request("extensions.status", b"{}", timeout=WAIT)
    assert reply.data == b"answered"


async def serve_requests(world: World, who: Conn) -> None:
    """Subscribe to extensions.status in the queue group extension-loader and answer a request."""
    await _serve_status(world, who, "extension-loader")


async def serve_in_another_group(world: World, who: Conn) -> None:
    """Subscribe to extensions.status in another queue group and answer a request."""
    await _serve_status(world, who, "rogue")


async def serve_fleet(world: World, who: Conn) -> None:
    """Subscribe to extensions.all.status without a queue group (as every instance does) and answer a request."""

    async def answer(msg: Msg) -> None:
        await msg.respond(b"answered")

    await who.nc.subscribe("extensions.all.status", cb=answer)
    await flush_subscriptions(who.nc)
    reply = await world.helpers["orchestrator"].nc.request("extensions.all.status", b"{}", timeout=WAIT)
    assert reply.data == b"answered"


async def snoop_requests(world: World, who: Conn) -> None:
    """Subscribe to extensions.load outside the queue group, and see a request meant for the service."""
    orchestrator = world.helpers["orchestrator"]
    await _receive_one(who, "extensions.load", partial(orchestrator.nc.publish, "extensions.load", b"{}", reply="x"))


async def replay_events(world: World, who: Conn) -> None:
    """Replay EXTENSION_EVENTS through a durable pull consumer: create it, fetch an event, acknowledge it."""
    loader = world.helpers["loader"]
    ack = await loader.nc.jetstream().publish("extensions.loaded", b"stored", headers={"Nats-Msg-Id": "m1"})
    assert ack.stream == STREAM
    sub = await who.nc.jetstream().pull_subscribe("extensions.loaded", durable="replay", stream=STREAM)
    (msg,) = await sub.fetch(1, timeout=WAIT)
    assert msg.data == b"stored"
    await msg.ack_sync()


async def create_event_stream(world: World, who: Conn) -> None:
    """Create EXTENSION_EVENTS over the event subjects (as the service does when it is not there yet)."""
    await who.nc.jetstream().add_stream(
        StreamConfig(name=STREAM, subjects=["extensions.loaded", "extensions.unloaded"])
    )


async def create_stream(world: World, who: Conn) -> None:
    """Create a JetStream stream other than EXTENSION_EVENTS."""
    await who.nc.jetstream().add_stream(StreamConfig(name="OTHER", subjects=["other.>"]))


async def delete_event_stream(world: World, who: Conn) -> None:
    """Delete EXTENSION_EVENTS (which the service made)."""
    assert await who.nc.jetstream().delete_stream(STREAM)


# --- private inboxes ---

# The server answers a JetStream API request itself, into the requester's inbox; every user may ask this one.
INFO_REQUEST = f"$JS.API.STREAM.INFO.{INDEX_STREAM}"


def _someone_else(who: Conn) -> str:
    return "orchestrator" if who.user == "loader" else "loader"


async def _ask_jetstream(conn: Conn) -> None:
    await conn.nc.request(INFO_REQUEST, b"", timeout=WAIT)


async def reply_to_own_inbox(world: World, who: Conn) -> None:
    """Get a reply (JetStream's, to a stream info request) in one's own inbox, _INBOX.<user>."""
    msg = await who.nc.request(INFO_REQUEST, b"", timeout=WAIT)
    assert msg.subject.startswith(f"{inbox(who.user)}.")
    assert msgspec.json.decode(msg.data)["type"] == "io.nats.jetstream.api.v1.stream_info_response"


async def read_another_inbox(world: World, who: Conn) -> None:
    """Subscribe to another user's inbox (_INBOX.<other>.>) and see a reply meant for that user."""
    other = world.helpers[_someone_else(who)]
    await _receive_one(who, f"{inbox(other.user)}.>", partial(_ask_jetstream, other))


async def read_every_inbox(world: World, who: Conn) -> None:
    """Subscribe to _INBOX.> and see a reply meant for another user."""
    await _receive_one(who, "_INBOX.>", partial(_ask_jetstream, world.helpers[_someone_else(who)]))


async def forge_a_reply(world: World, who: Conn) -> None:
    """Publish into another user's inbox, as a forged reply; that user receives it."""
    other = world.helpers[_someone_else(who)]
    subject = f"{inbox(other.user)}.forged"
    msg = await _receive_one(other, subject, partial(who.nc.publish, subject, b"forged"))
    assert msg.data == b"forged"


# --- the registry ---


async def make_registry(publisher: Conn) -> Registry:
    """The two buckets as a publisher makes them, with one index record and one archive."""
    js = publisher.nc.jetstream()
    index = await js.create_key_value(KeyValueConfig(bucket=INDEX, history=16, direct=True))
    await index.create(RECORD_KEY, b'{"name": "etcd"}')
    archives = await js.create_object_store(ARCHIVES)
    archive = bytes(range(256)) * (5 * CHUNK // 256 // 2)  # two and a half chunks
    name = f"sha256/{sha256(archive).hexdigest()}"
    await archives.put(name, archive, meta=ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=CHUNK)))
    return Registry(archive, name)


def _registry(world: World) -> Registry:
    assert world.registry is not None
    return world.registry


async def _index(conn: Conn) -> KeyValue:
    return await conn.nc.jetstream().key_value(INDEX)


async def _archives(conn: Conn) -> ObjectStore:
    return await conn.nc.jetstream().object_store(ARCHIVES)


async def create_buckets(world: World, who: Conn) -> None:
    """Create the registry's buckets: the Key-Value index and the Object Store of archives."""
    js = who.nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=INDEX, history=16))
    await js.create_object_store(ARCHIVES)
    for stream in (INDEX_STREAM, ARCHIVES_STREAM):
        assert (await js.stream_info(stream)).config.name == stream


async def change_a_bucket(world: World, who: Conn) -> None:
    """Change a bucket's settings: the index's history."""
    js = who.nc.jetstream()
    config = (await js.stream_info(INDEX_STREAM)).config
    config.max_msgs_per_subject = 32
    assert (await js.update_stream(config)).config.max_msgs_per_subject == 32


async def _watch_until(
    index: KeyValue, keys: Sequence[str], then: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Watches the index until every one of `keys` has come, `then()` run once the first has.

    nats-py 2.16 may send the watch's end-of-history marker (None) before the history itself: it compares the
    consumer's pending count with the messages its callback has handled so far, and the first may be queued
    still. So the marker says nothing here (and `keys()`, built on it, may miss a key): wait for the keys.
    """
    watcher = await index.watch("taskserv.*")
    try:
        waiting = list(keys)
        while waiting:
            entry = await watcher.updates(timeout=WAIT)  # type: ignore[no-untyped-call]
            if entry is not None and entry.key in waiting:
                if entry.key == keys[0] and then is not None:
                    await then()
                waiting.remove(entry.key)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def read_the_index(world: World, who: Conn) -> None:
    """Read the index: a record (direct get and message get), and a watch (the ordered consumer behind keys,
    history and watch) that sees the record, then a live update by the publisher."""
    index = await _index(who)
    assert (await index.get(RECORD_KEY)).value == b'{"name": "etcd"}'
    js = who.nc.jetstream()
    assert (await js.get_last_msg(INDEX_STREAM, f"$KV.{INDEX}.{RECORD_KEY}", direct=False)).data is not None
    publisher = await _index(world.helpers["publisher"])
    await _watch_until(index, [RECORD_KEY, "taskserv.live"], partial(publisher.put, "taskserv.live", b"{}"))


async def follow_a_large_index(world: World, who: Conn) -> None:
    """Watch an index of a few megabytes to its end: on the way the server asks for flow control, which the
    reader answers on $JS.FC."""
    publisher = await _index(world.helpers["publisher"])
    large = [f"taskserv.large{i}" for i in range(3)]
    for key in large:
        await publisher.put(key, bytes(LARGE_VALUE))
    await _watch_until(await _index(who), [RECORD_KEY, *large])


async def write_the_index(world: World, who: Conn) -> None:
    """Put a record in the index; the loader reads it back."""
    await (await _index(who)).put("taskserv.forged", b"{}")
    assert (await (await _index(world.helpers["loader"])).get("taskserv.forged")).value == b"{}"


async def delete_from_the_index(world: World, who: Conn) -> None:
    """Delete the index's record; the loader finds it gone."""
    await (await _index(who)).delete(RECORD_KEY)
    with pytest.raises(KeyNotFoundError):
        await (await _index(world.helpers["loader"])).get(RECORD_KEY)


async def read_an_archive(world: World, who: Conn) -> None:
    """Read an archive as the loader does: its info, then its chunks through a pull consumer of one's own."""
    registry = _registry(world)
    info = await (await _archives(who)).get_info(registry.name)
    consumer = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=WAIT, mem_storage=True)
    sub = await who.nc.jetstream().pull_subscribe(
        f"$O.{ARCHIVES}.C.{info.nuid}", stream=ARCHIVES_STREAM, config=consumer
    )
    received = bytearray()
    while len(received) < len(registry.archive):
        for msg in await sub.fetch(8, timeout=WAIT):
            received += msg.data
    assert bytes(received) == registry.archive
    await sub.unsubscribe()


async def get_an_archive(world: World, who: Conn) -> None:
    """Read an archive with ObjectStore.get (an ordered consumer; nats-py checks the digest)."""
    registry = _registry(world)
    assert (await (await _archives(who)).get(registry.name)).data == registry.archive


async def get_a_large_archive(world: World, who: Conn) -> None:
    """ObjectStore.get of an archive of a few megabytes: on the way the server asks for flow control."""
    archive = bytes(range(256)) * (6 * CHUNK // 256)
    meta = ObjectMeta(name="sha256/large", options=ObjectMetaOptions(max_chunk_size=CHUNK))
    await (await _archives(world.helpers["publisher"])).put("sha256/large", archive, meta=meta)
    assert (await (await _archives(who)).get("sha256/large")).data == archive


async def put_an_archive(world: World, who: Conn) -> None:
    """Put an archive into the Object Store; the loader sees its info."""
    meta = ObjectMeta(name="sha256/forged", options=ObjectMetaOptions(max_chunk_size=CHUNK))
    await (await _archives(who)).put("sha256/forged", b"forged", meta=meta)
    assert (await (await _archives(world.helpers["loader"])).get_info("sha256/forged")).size == len(b"forged")


async def delete_an_archive(world: World, who: Conn) -> None:
    """Delete the archive (its metadata marked deleted, its chunks purged); the loader finds it gone."""
    name = _registry(world).name
    await (await _archives(who)).delete(name)
    with pytest.raises(ObjectNotFoundError):
        await (await _archives(world.helpers["loader"])).get_info(name)


async def purge_the_archives(world: World, who: Conn) -> None:
    """Purge the archives' stream: every chunk and all metadata gone."""
    js = who.nc.jetstream()
    assert await js.purge_stream(ARCHIVES_STREAM)
    assert (await world.helpers["publisher"].nc.jetstream().stream_info(ARCHIVES_STREAM)).state.messages == 0


async def redirect_the_index(world: World, who: Conn) -> None:
    """Have a push consumer of the index deliver its record onto an event subject: NATS checks no permission on
    a delivery subject, so whoever may read a stream through consumers can do this; an event subscriber gets
    the record, as it is."""
    consumer = ConsumerConfig(
        deliver_subject="extensions.loaded", filter_subject=f"$KV.{INDEX}.{RECORD_KEY}", ack_policy=AckPolicy.NONE
    )

    async def create() -> None:
        await who.nc.jetstream().add_consumer(INDEX_STREAM, config=consumer)

    msg = await _receive_one(world.helpers["observer"], "extensions.loaded", create)
    assert msg.data == b'{"name": "etcd"}'


# What an action needs before it: the service started as the loader user ("core", or "jetstream" to have the
# stream), or the registry's buckets as the publisher makes them ("registry").
NEEDS = {
    "request": "core",
    "fleet_request": "core",
    "srv_ping": "core",
    "srv_stats": "core",
    "replay_events": "jetstream",
    "delete_event_stream": "jetstream",
    "change_a_bucket": "registry",
    "read_the_index": "registry",
    "follow_a_large_index": "registry",
    "get_a_large_archive": "registry",
    "write_the_index": "registry",
    "delete_from_the_index": "registry",
    "read_an_archive": "registry",
    "get_an_archive": "registry",
    "put_an_archive": "registry",
    "delete_an_archive": "registry",
    "purge_the_archives": "registry",
    "redirect_the_index": "registry",
}

ACTIONS: dict[str, Action] = {
    "request": request,
    "fleet_request": fleet_request,
    "srv_ping": srv_ping,
    "srv_stats": srv_stats,
    "publish_event": publish_event,
    "subscribe_event": subscribe_event,
    "serve_requests": serve_requests,
    "serve_in_another_group": serve_in_another_group,
    "serve_fleet": serve_fleet,
    "snoop_requests": snoop_requests,
    "replay_events": replay_events,
    "create_event_stream": create_event_stream,
    "create_stream": create_stream,
    "delete_event_stream": delete_event_stream,
    "reply_to_own_inbox": reply_to_own_inbox,
    "read_another_inbox": read_another_inbox,
    "read_every_inbox": read_every_inbox,
    "forge_a_reply": forge_a_reply,
    "create_buckets": create_buckets,
    "change_a_bucket": change_a_bucket,
    "read_the_index": read_the_index,
    "follow_a_large_index": follow_a_large_index,
    "get_a_large_archive": get_a_large_archive,
    "write_the_index": write_the_index,
    "delete_from_the_index": delete_from_the_index,
    "read_an_archive": read_an_archive,
    "get_an_archive": get_an_archive,
    "put_an_archive": put_an_archive,
    "delete_an_archive": delete_an_archive,
    "purge_the_archives": purge_the_archives,
    "redirect_the_index": redirect_the_index,
}

A, R = "allowed", "refused"
# Replies from the loader reach the requester's private inbox through allow_responses: `request`,
# `fleet_request`, `srv_*` and `serve_*` show it for every user that may ask.
#                         orchestrator anonymous loader observer publisher
MATRIX: dict[str, tuple[str, str, str, str, str]] = {
    "request": (A, A, R, R, R),
    "fleet_request": (A, A, R, R, R),  # as the single-instance requests
    "srv_ping": (A, A, A, A, R),  # the loader: its container health check
    "srv_stats": (A, A, R, A, R),
    "publish_event": (R, R, A, R, R),
    "subscribe_event": (A, A, A, A, R),
    "serve_requests": (R, R, A, R, R),
    "serve_in_another_group": (R, R, R, R, R),
    "serve_fleet": (R, R, A, R, R),
    "snoop_requests": (R, R, R, R, R),
    "replay_events": (R, R, R, A, R),
    "create_event_stream": (R, R, A, R, R),
    "create_stream": (R, R, R, R, R),
    "delete_event_stream": (R, R, R, R, R),
    "reply_to_own_inbox": (A, A, A, A, A),
    "read_another_inbox": (R, R, R, R, R),
    "read_every_inbox": (R, R, R, R, R),
    "forge_a_reply": (R, R, R, R, R),
    "create_buckets": (R, R, R, R, A),
    "change_a_bucket": (R, R, R, R, A),
    "read_the_index": (A, A, A, A, A),  # `extension-loader search`, for people too
    "follow_a_large_index": (A, A, A, A, A),
    "write_the_index": (R, R, R, R, A),
    "delete_from_the_index": (R, R, R, R, A),
    "read_an_archive": (R, R, A, R, A),
    "get_an_archive": (R, R, A, R, A),
    "get_a_large_archive": (R, R, A, R, A),
    "put_an_archive": (R, R, R, R, A),
    "delete_an_archive": (R, R, R, R, A),
    "purge_the_archives": (R, R, R, R, A),
    "redirect_the_index": (A, A, A, A, A),  # a limit of NATS (README.md, Security): trust signatures, not subjects
}


def matrix_table() -> str:
    rows = [("action", *USERS), *((name, *cells) for name, cells in MATRIX.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(USERS) + 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


CASES = [
    pytest.param(user, action, MATRIX[action][i], id=f"{user}-{action}-{MATRIX[action][i]}")
    for action in MATRIX
    for i, user in enumerate(USERS)
]


@pytest.mark.parametrize(("user", "action", "expected"), CASES)
async def test_permission_matrix(secured: NatsServer, tmp_path: Path, user: str, action: str, expected: str) -> None:
    async with AsyncExitStack() as stack:
        helpers = {u: await stack.enter_async_context(connect(secured.url, u)) for u in PASSWORDS}
        service = registry = None
        if (need := NEEDS.get(action)) == "registry":
            registry = await make_registry(helpers["publisher"])
        elif need:
            config = loader_config(secured.url, tmp_path, **{"events.jetstream": need == "jetstream"})
            service = await stack.enter_async_context(running_service(config))
        world = World(secured, helpers, service, registry)
        who = await stack.enter_async_context(connect(secured.url, user))
        outcome = await attempt(who, partial(ACTIONS[action], world, who))
        assert outcome == expected, (
            f"{user} {action}: {outcome}, the matrix says {expected} ({ACTIONS[action].__doc__})\n"
            f"{who.violations}\n\n{matrix_table()}"
        )
        if expected == R:
            # The server logs it too, with the user (anonymous is the no_auth_user, orchestrator).
            kind = "Publish" if "for publish to" in who.violations[0] else "Subscription"
            logged_as = "orchestrator" if user == ANONYMOUS else user
            await wait_for_log(secured, f'"$G/user:{logged_as}" - {kind} Violation - Subject ')


def test_the_matrix_covers_every_user_and_action() -> None:
    assert set(MATRIX) == set(ACTIONS)
    print("\n" + matrix_table())


# --- logging in -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["orchestrator", "loader", "observer", "publisher"])
async def test_a_wrong_password_is_refused(secured: NatsServer, user: str) -> None:
    someone_elses = next(p for u, p in PASSWORDS.items() if u != user)
    for password in ("wrong", someone_elses):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            async with connect(secured.url, user, password):
                pass
    await wait_for_log(secured, f'authentication error - User "{user}"', count=2)


async def test_an_unknown_user_is_refused(secured: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        async with connect(secured.url, "admin", "anything"):
            pass


async def test_without_credentials_a_client_is_the_orchestrator(secured: NatsServer, tmp_path: Path) -> None:
    """no_auth_user: a person on the machine loads an extension without a password, and cannot forge events."""
    async with running_service(loader_config(secured.url, tmp_path)), connect(secured.url, ANONYMOUS) as anonymous:
        loaded = await LoaderClient(anonymous.nc, timeout=WAIT).load("taskserv", "etcd")
        assert loaded["metadata"]["name"] == "etcd"
        await anonymous.nc.publish("extensions.unloaded", b"{}")
        await flush_subscriptions(anonymous.nc)  # two round trips: the PUB has reached the server before a PING
        assert anonymous.violations == ['nats: permissions violation for publish to "extensions.unloaded"']
    await wait_for_log(secured, '"$G/user:orchestrator" - Publish Violation - Subject "extensions.unloaded"')


# --- the service under these permissions ------------------------------------------------------------------------


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
async def test_the_service_works_as_the_loader_user(
    secured: NatsServer, tmp_path: Path, jetstream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Serves every kind of request, publishes its events and (JetStream) keeps its stream; nothing refused."""
    if jetstream:
        # A stream from before with one subject too few: the loader may update its own stream.
        async with connect(secured.url, "loader") as loader:
            await loader.nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=["extensions.loaded"]))
    config = loader_config(secured.url, tmp_path, **{"events.jetstream": jetstream})
    events = EventLog()
    async with connect(secured.url, "observer") as observer, connect(secured.url, "orchestrator") as orchestrator:
        for subject in ("extensions.loaded", "extensions.unloaded"):
            await observer.nc.subscribe(subject, cb=events.add)
        await flush_subscriptions(observer.nc)
        async with running_service(config) as service:
            client = LoaderClient(orchestrator.nc, timeout=WAIT)
            await client.load("taskserv", "kubernetes", with_dependencies=True)
            await client.reload("taskserv", "etcd")
            await client.status("taskserv", "etcd")
            await client.list()
            await client.discover("taskserv")
            await client.graph("taskserv", "kubernetes", None, "json")
            assert (await client.clear())["cleared"] > 0
            assert (await client.stats())["instance_id"] == service.identity.id
            for suffix, body in [("list", {}), ("status", {"extension_type": "taskserv", "name": "etcd"})]:
                assert len((await client.gather(suffix, body, replies=1)).answers) == 1
            assert len((await client.gather("stats", replies=1)).answers) == 1
            assert (await client.gather("cache.clear", replies=1)).answers[0]["data"] == {"cleared": 0}
            await srv_stats(World(secured, {}, service), orchestrator)
        # Leaving the service waited for the events of every request it answered.
        published = service.publisher.published
        assert service.publisher.failed == 0 and published > 0
        await events.wait_for(published)
        if jetstream:
            info = await observer.nc.jetstream().stream_info(STREAM)
            assert sorted(info.config.subjects or []) == ["extensions.loaded", "extensions.unloaded"]
            assert info.state.messages == published
    assert orchestrator.violations == observer.violations == []
    await log_barrier(secured)
    refused = [line for line in secured.log if "Violation" in line and 'Subject "log.barrier"' not in line]
    assert refused == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "NATS error" in r.getMessage()]


async def serve_until_it_stops(url: str, cwd: Path, user: str | None, password: str = "") -> tuple[int, str]:
    """`extension-loader serve` as `user` (None: no credentials), run until it exits: its status and log."""
    credentials = [] if user is None else ["--set", f'nats.user="{user}"', "--set", f'nats.password="{password}"']
    argv = [
        *(sys.executable, "-m", "service", "serve", "--nats-url", url),
        *credentials,
        *("--set", f'orchestrator.extensions.paths=["{EXAMPLES}"]', "--set", f'nushell.path="{NU}"'),
        *("--set", "orchestrator.extensions.auto_load=false"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    with anyio.fail_after(WAIT):
        done = await anyio.run_process(argv, env=env, cwd=cwd, check=False)
    return done.returncode, done.stderr.decode()


async def test_the_service_with_a_wrong_password_is_refused(secured: NatsServer, tmp_path: Path) -> None:
    """`extension-loader serve` as loader with a wrong password stops at once and says why (trying again
    would not help), instead of retrying for ever."""
    code, said = await serve_until_it_stops(secured.url, tmp_path, "loader", "wrong")
    assert code == 3, said
    assert "refused the connection" in said and "Authorization Violation" in said
    assert "Traceback" not in said
    await wait_for_log(secured, 'authentication error - User "loader"')


@pytest.mark.parametrize("user", ["orchestrator", ANONYMOUS, "observer"])
async def test_the_service_as_a_user_that_may_not_serve_is_refused(
    secured: NatsServer, tmp_path: Path, user: str
) -> None:
    """`extension-loader serve` started with another user's credentials (or none, the usual slip on a machine
    where `make run` serves) gets in but may not subscribe to the request subjects: it stops at once and says
    why, instead of logging violations and then claiming to serve."""
    if user == ANONYMOUS:
        code, said = await serve_until_it_stops(secured.url, tmp_path, None)
    else:
        code, said = await serve_until_it_stops(secured.url, tmp_path, user, PASSWORDS[user])
    assert code == 3, said
    assert "refuses" in said and "permissions violation for subscription" in said.lower() and "loader user" in said
    assert "serving extensions" not in said and "reconnecting" not in said and "Traceback" not in said


@pytest.mark.parametrize("user", ["loader", "observer"])
async def test_the_command_line_as_a_user_that_may_not_ask_says_so_at_once(
    secured: NatsServer, tmp_path: Path, user: str
) -> None:
    """`extension-loader stats` as a user that may not send requests: the server's refusal ends the call with
    one line (exit 4) instead of a wait for --timeout that reads like a service that does not answer."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_CA")}
    argv = [sys.executable, "-m", "service", "stats", "--server", secured.url, "--user", user]
    argv += ["--password", PASSWORDS[user], "--timeout", "600"]
    async with running_service(loader_config(secured.url, tmp_path)):
        with anyio.fail_after(WAIT):  # far below --timeout: the refusal, not the time-out, ends the call
            done = await anyio.run_process(argv, env=env, cwd=ROOT, check=False)
    said = done.stderr.decode()
    assert done.returncode == 4, said
    assert "permissions violation for publish" in said.lower() and f"user {user!r} may not make this request" in said
    assert "Traceback" not in said


async def test_the_command_line_gets_its_replies_under_its_users_inbox(secured: NatsServer, tmp_path: Path) -> None:
    """`extension-loader stats`, one instance or all, as a person calls it (a user, or none on this machine): the
    service, as the loader user, answers into the caller's own inbox. With another user's prefix the server
    refuses the inbox, and the command says which flag to fix at once rather than waiting out --timeout."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_CA")}
    cli = [sys.executable, "-m", "service", "stats", "--server", secured.url, "--json", "--timeout", "600"]
    as_orchestrator = ["--user", "orchestrator", "--password", PASSWORDS["orchestrator"]]
    async with running_service(loader_config(secured.url, tmp_path)) as service:
        for extra in ([], as_orchestrator, [*as_orchestrator, "--all", "--replies", "1"]):
            with anyio.fail_after(WAIT):
                done = await anyio.run_process([*cli, *extra], env=env, cwd=ROOT, check=False)
            assert done.returncode == 0, done.stderr.decode()
            answer = msgspec.json.decode(done.stdout)
            assert (answer[0] if isinstance(answer, list) else answer)["instance_id"] == service.identity.id
        with anyio.fail_after(WAIT):  # far below --timeout: the refusal ends the call
            done = await anyio.run_process(
                [*cli, *as_orchestrator, "--inbox-prefix", "_INBOX.loader"], env=env, cwd=ROOT, check=False
            )
    said = done.stderr.decode()
    assert done.returncode == 4, said
    assert "permissions violation for subscription" in said.lower() and "--inbox-prefix" in said
    assert "user 'orchestrator' may not receive replies under _INBOX.loader" in said and "Traceback" not in said
    await wait_for_log(secured, '"$G/user:orchestrator" - Subscription Violation - Subject "_INBOX.loader.')


async def test_the_service_with_another_users_inbox_prefix_stops_at_once(secured: NatsServer, tmp_path: Path) -> None:
    """The service as loader with the orchestrator's inbox prefix: the server refuses it that inbox, and the start
    stops naming nats.inbox_prefix, before any JetStream call could time out on it."""
    config = loader_config(
        secured.url, tmp_path, **{"events.jetstream": True, "nats.inbox_prefix": "_INBOX.orchestrator"}
    )
    with anyio.fail_after(WAIT), pytest.raises(ConnectRefused, match=r"set nats\.inbox_prefix") as info:
        async with running_service(config):
            pass
    assert "refuses user 'loader' replies under the inbox prefix '_INBOX.orchestrator'" in str(info.value)
    await wait_for_log(secured, '"$G/user:loader" - Subscription Violation - Subject "_INBOX.orchestrator.')


async def test_the_container_health_check_passes_as_the_loader_user(secured: NatsServer, tmp_path: Path) -> None:
    """deploy/healthcheck.py with the compose environment (user loader, its password) against nats.conf."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= {
        f"{ENV_PREFIX}NATS__URL": secured.url,
        f"{ENV_PREFIX}NATS__USER": "loader",
        f"{ENV_PREFIX}NATS__PASSWORD": PASSWORDS["loader"],
    }
    argv = [sys.executable, str(ROOT / "deploy" / "healthcheck.py"), str(ROOT / "deploy" / "loader.toml")]
    async with running_service(loader_config(secured.url, tmp_path)) as service:
        with anyio.fail_after(30):
            done = await anyio.run_process(argv, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert service.identity.id in done.stdout.decode()


# --- `extension-loader dev` (make run) with nothing set ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_dev_runs_with_development_passwords_and_serves_as_the_loader(tmp_path: Path) -> None:
    """Nothing set: a warning, nats-server with development passwords, the service as `loader`, no password needed."""
    port = free_port()
    shutil.copy(NATS_CONF, tmp_path / "nats.conf")  # nats.conf as it is, on a free port instead of 4222
    (tmp_path / "dev.conf").write_text(
        f'include "nats.conf"\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{free_port()}\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES.values() and not k.startswith(ENV_PREFIX)}
    url = f"nats://127.0.0.1:{port}"
    argv = [
        *(sys.executable, "-m", "service", "dev", "--nats-config", "dev.conf", "--nats-url", url),
        *("--set", f'orchestrator.extensions.paths=["{EXAMPLES}"]', "--set", f'nushell.path="{NU}"'),
        *("--set", "orchestrator.extensions.auto_load=false"),
    ]
    stdout, stderr = bytearray(), bytearray()
    ready = anyio.Event()
    async with await anyio.open_process(argv, env=env, cwd=tmp_path) as process, anyio.create_task_group() as tg:
        assert process.stdout is not None and process.stderr is not None

        async def read(stream: Any, into: bytearray) -> None:
            async for chunk in stream:
                into.extend(chunk)
                if b"Ctrl-C stops" in stdout:
                    ready.set()

        tg.start_soon(read, process.stdout, stdout)
        tg.start_soon(read, process.stderr, stderr)
        try:
            with anyio.fail_after(WAIT):
                await ready.wait()
            assert b"as NATS user loader" in stdout
            async with connect(url, ANONYMOUS) as anonymous:  # a person on the machine, typing no password
                client = LoaderClient(anonymous.nc, timeout=WAIT)
                event = await _receive_one(anonymous, "extensions.loaded", partial(client.load, "taskserv", "etcd"))
                assert msgspec.json.decode(event.data)["extension"]["metadata"]["name"] == "etcd"
            # The variables are unset here: the passwords on this server are the development ones.
            for user, variable in VARIABLES.items():
                async with connect(url, user, DEV_PASSWORDS[variable]):
                    pass
            assert b"nats --inbox-prefix _INBOX.orchestrator request extensions.load" in stdout
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C: the service stops, then its nats-server
            with anyio.fail_after(WAIT):
                code = await process.wait()
    assert code == 0, stderr.decode()
    lines = stderr.decode().splitlines()
    warning = lines[0]
    assert "WARNING" in warning and "DEVELOPMENT passwords" in warning
    assert all(name in warning for name in VARIABLES.values())
    assert not [line for line in lines if "NATS error" in line or "iolation" in line]


# --- TLS --------------------------------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path  # the server's
    key: Path
    client_cert: Path  # a client's, for mutual TLS
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """A CA; a server certificate it signed for 127.0.0.1 and localhost, and a client certificate."""
    folder.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA", cwd=folder
    )  # fmt: skip
    for name, extensions in (
        ("server", "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n"),
        ("client", "extendedKeyUsage = clientAuth\n"),
    ):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        (folder / f"{name}.ext").write_text(
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
            f"authorityKeyIdentifier = keyid\n{extensions}"
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
        )  # fmt: skip
    return Pki(*(folder / f for f in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))


def start_tls_server(tmp_path: Path, pki: Pki, *, verify_clients: bool = False) -> NatsServer:
    """nats.conf with a `tls` block: every client must speak TLS (and, verifying, show a certificate of the CA)."""
    shutil.copy(NATS_CONF, tmp_path / "nats.conf")  # an include is relative to the file that includes it
    verify = f'  ca_file: "{pki.ca}"\n  verify: true\n' if verify_clients else ""
    (tmp_path / "tls.conf").write_text(
        f'include "nats.conf"\ntls {{\n  cert_file: "{pki.cert}"\n  key_file: "{pki.key}"\n{verify}  timeout: 5\n}}\n'
    )
    return start_server(tmp_path, tmp_path / "tls.conf")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the certificates")
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[tuple[NatsServer, Pki]]:
    server = start_tls_server(tmp_path, pki)
    try:
        yield server, pki
    finally:
        server.stop()


@pytest.mark.parametrize("scheme", ["tls", "nats"])
async def test_tls(tls_server: tuple[NatsServer, Pki], tmp_path: Path, scheme: str) -> None:
    """The service with nats.tls_ca; clients with the CA are served, one without it or without TLS is refused."""
    server, pki = tls_server
    url = f"{scheme}://127.0.0.1:{server.port}"
    config = loader_config(url, tmp_path / "service", **{"nats.tls_ca": str(pki.ca)})
    assert config.nats.tls
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    async with running_service(config) as service:
        async with connect(url, "orchestrator", tls=trusting) as orchestrator:
            loaded = await LoaderClient(orchestrator.nc, timeout=WAIT).load("taskserv", "etcd")
            assert loaded["metadata"]["name"] == "etcd"
        # The command-line client, as a person would call it: with the CA it is served; without, refused.
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_CA")}
        cli = [sys.executable, "-m", "service", "stats", "--server", url, "--json"]
        with anyio.fail_after(30):
            done = await anyio.run_process([*cli, "--tls-ca", str(pki.ca)], env=env, cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert msgspec.json.decode(done.stdout)["instance_id"] == service.identity.id
        with anyio.fail_after(30):
            refused = await anyio.run_process(cli, env=env, cwd=ROOT, check=False)
        assert refused.returncode == 4, refused.stderr.decode()
        # With either scheme nats-py starts TLS (the server requires it) with the system's CAs, which do not know
        # this one: the handshake fails.
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr.decode()
    await wait_for_log(server, "TLS handshake error")


async def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    """A server that verifies clients: the service shows nats.tls_cert/tls_key; a client without one is refused."""
    server = start_tls_server(tmp_path, pki, verify_clients=True)
    try:
        url = f"tls://127.0.0.1:{server.port}"
        config = loader_config(
            url,
            tmp_path / "service",
            **{"nats.tls_ca": str(pki.ca), "nats.tls_cert": str(pki.client_cert), "nats.tls_key": str(pki.client_key)},
        )
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        async with running_service(config) as service, connect(url, "orchestrator", tls=with_cert) as orchestrator:
            stats = await LoaderClient(orchestrator.nc, timeout=WAIT).stats()
            assert stats["instance_id"] == service.identity.id
            env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_CA")}
            cli = [sys.executable, "-m", "service", "stats", "--server", url, "--tls-ca", str(pki.ca)]
            with anyio.fail_after(30):
                refused = await anyio.run_process(cli, env=env, cwd=ROOT, check=False)
            assert refused.returncode == 4, refused.stderr.decode()
        await wait_for_log(server, "TLS handshake error: tls: client didn't provide a certificate")
    finally:
        server.stop()


async def test_a_user_without_jetstream_rights_gets_a_clear_stop(secured: NatsServer, tmp_path: Path) -> None:
    """With events.jetstream on, a user that may not manage the stream stops the start with a reason, not a
    bare time-out that reads like an unreachable server."""
    config = loader_config(
        secured.url,
        tmp_path,
        **{"nats.user": "observer", "nats.password": PASSWORDS["observer"], "events.jetstream": True},
    )
    with pytest.raises(EventStreamError, match=r"may this user use \$JS\.API\.STREAM\.\*\.EXTENSION_EVENTS"):
        async with running_service(config):
            pass


async def test_the_registry_works_as_publisher_and_loader_with_nothing_refused(
    secured: NatsServer, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """The publisher publishes and yanks; a loader with auto_update follows the index, fetches the archive with
    its own consumer (and deletes that consumer), loads it, and announces the yank: every step within nats.conf,
    no permission refused, no NATS error logged."""
    config = loader_config(secured.url, tmp_path, **registry_settings(signer.public_key, auto_update=True))
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    events = EventLog()
    async with connect(secured.url, "publisher") as publisher, connect(secured.url, "observer") as observer:
        for subject in ("extensions.loaded", "extensions.unloaded"):
            await observer.nc.subscribe(subject, cb=events.add)
        await flush_subscriptions(observer.nc)
        await set_up(publisher.nc, registry_targets(DEFAULT_NAMES))  # the only user nats.conf lets make them
        buckets = RegistryBuckets(publisher.nc)
        await buckets.open()
        async with running_service(config), connect(secured.url, "orchestrator") as orchestrator:
            await publish(buckets, await prepare(folder, signer, config))
            (loaded,) = await events.wait_for(1, ".loaded")
            assert loaded["reason"] == "published"
            client = LoaderClient(orchestrator.nc, timeout=WAIT)
            assert (await client.load("taskserv", "vault", "1.0.0"))["metadata"]["version"] == "1.0.0"
            await yank(buckets, ExtensionType.TASKSERV, "vault", "1.0.0")
            (unloaded,) = await events.wait_for(1, ".unloaded")
            assert unloaded["reason"] == "yanked"
            assert (await client.stats())["registry"]["fetched"] == 1
        assert publisher.violations == observer.violations == orchestrator.violations == []
    await log_barrier(secured)
    refused = [line for line in secured.log if "Violation" in line and 'Subject "log.barrier"' not in line]
    assert refused == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "NATS error" in r.getMessage()]


async def test_a_person_searches_the_registry_but_only_the_publisher_publishes_or_yanks(
    secured: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    """From the command line: `search` works for anyone who may read the index; `publish` and `yank` by anyone
    but `publisher` end at once with the refusal (not after the time-out) and exit 4."""
    config = make_config(secured.url, tmp_path)
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    async with connect(secured.url, "publisher") as publisher:
        await set_up(publisher.nc, registry_targets(DEFAULT_NAMES))  # the only user nats.conf lets make them
        buckets = RegistryBuckets(publisher.nc)
        await buckets.open()
        await publish(buckets, await prepare(folder, signer, config))
    cli = [str(Path(sys.executable).with_name("extension-loader"))]
    server = ("--server", secured.url)
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([*cli, "search", "vault", *server], check=False)
    assert done.returncode == 0 and "vault" in done.stdout.decode()
    key = tmp_path / "publisher.nk"
    for command in (["yank", "taskserv", "vault", "1.0.0"], ["publish", str(folder), "--key", str(key)]):
        with anyio.fail_after(WAIT / 2):  # well inside the registry's own 30 s time-out
            done = await anyio.run_process([*cli, *command, *server, "--set", f'nushell.path="{NU}"'], check=False)
        assert done.returncode == 4, done.stderr
        assert "permissions violation" in done.stderr.decode() and "may not make this request" in done.stderr.decode()
