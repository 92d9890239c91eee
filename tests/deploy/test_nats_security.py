"""Who may do what on NATS, and what no one can do to another: the accounts, users and permissions of the repo's own
nats.conf, against a real nats-server.

The server runs nats.conf as it is, with test passwords in its environment; `-p -1 -m -1` move its client and
monitoring ports to free ones, and its JetStream store (`./data/jetstream`) lands in the test's folder, the
server's working folder (`-sd` cannot replace a store_dir that the file sets). Every test starts from what
`extension-loader setup` leaves: `admin` has made the event log EXTENSION_EVENTS (in account EVENTS, through
`$JS.events.API`) and the registry's two buckets (in REG), with plain nats-py calls.

The matrix test tries every action as every user and reads the outcome from the wire: an allowed action shows its
effect (a reply, a message received, a record read back), a refused one a "Permissions Violation" for the client
(nats-py's error callback) and in the server's log. A refused JetStream write also leaves the client waiting for
an acknowledgement that never comes: the test takes the violation as the answer instead of waiting that out.

The attack tests judge by the outcome for the others: every place another user listens (each inbox, the event
subjects, the request subject in the service's queue group) is subscribed before the attack, and afterwards a
marker is sent down each of those paths: what a subscription got before its marker is everything the attack sent
it. The attack's own last step is answered first (a request of the same kind into the attacker's inbox), and the
server answers in order, so nothing of the attack is still on its way then. A stream is compared, settings and
contents, before and after, and the event log is read up to the markers to show what it stored. Nothing waits for
a fixed time. The same attacks are made against the service itself, run as `loader`: there its own genuine events
and its counters (refused requests, ignored events) are the markers.

Every client connects with its user's inbox prefix (`_INBOX.<user>`), the only inbox nats.conf lets it read, and
reaches a JetStream API under the prefix its account imports it with: `$JS.reg.API` (the registry) and
`$JS.events.API` (the event log); only `admin`, in REG, uses `$JS.API` itself.

The TLS tests make their own certificate authority and certificates with the openssl command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from hashlib import sha256
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectMeta,
    ObjectMetaOptions,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, KeyNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from service.app.cli.serving import DEV_PASSWORDS
from service.app.client import LoaderClient
from service.app.natsserver import NatsServer, free_port
from service.contract.config import ENV_PREFIX, Config, inbox_prefix_for
from service.contract.events import ExtensionUnloaded
from service.contract.messages import Extension, ExtensionType
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
    dev_running,
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
    "admin": "testAdmin1",
}
VARIABLES = {
    "orchestrator": "NATS_ORCHESTRATOR_PASSWORD",
    "loader": "NATS_LOADER_PASSWORD",
    "observer": "NATS_OBSERVER_PASSWORD",
    "publisher": "NATS_PUBLISHER_PASSWORD",
    "admin": "NATS_ADMIN_PASSWORD",
}
ANONYMOUS = "anonymous"  # no credentials at all: nats.conf's no_auth_user (orchestrator)
# The account each user is in (README.md, "Security").
ACCOUNTS = {
    "orchestrator": "LIVE",
    ANONYMOUS: "LIVE",
    "loader": "LIVE",
    "observer": "OBS",
    "publisher": "PUB",
    "admin": "REG",
}
RUNTIME = ("orchestrator", "loader", "observer", "publisher")  # every user but admin
USERS = ("orchestrator", ANONYMOUS, "loader", "observer", "publisher")  # the matrix's columns
STREAM = "EXTENSION_EVENTS"
EVENT_SUBJECTS = ["extensions.loaded", "extensions.unloaded"]
# The registry's buckets, as nats.conf names them.
INDEX, ARCHIVES = "extension-index", "extension-archives"
INDEX_STREAM, ARCHIVES_STREAM = f"KV_{INDEX}", f"OBJ_{ARCHIVES}"
STREAMS = (STREAM, INDEX_STREAM, ARCHIVES_STREAM)
# The JetStream APIs as the accounts see them: REG's own (admin), REG's exports, EVENTS's exports.
JS_API, REG_API, EVENTS_API = "$JS.API", "$JS.reg.API", "$JS.events.API"
PREFIXES = (JS_API, REG_API, EVENTS_API)
CHUNK = 512 * 1024
RECORD_KEY = "taskserv.etcd"
LARGE_VALUE = 900_000  # bytes of one large index record


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


@pytest.fixture
async def administered(secured: NatsServer) -> NatsServer:
    """The server once `admin` has made the event log and the registry's buckets."""
    await administer(secured.url)
    return secured


def loader_config(url: str, tmp_path: Path, **overrides: Any) -> Config:
    """The service's configuration as the `loader` user of nats.conf."""
    return make_config(
        url,
        tmp_path,
        overrides={"nats.user": "loader", "nats.password": PASSWORDS["loader"], **overrides},
    )


# The keys a loader sets in the account layout: the registry and the event log through their imports, events
# published plainly (EVENTS captures them).
LAYOUT = {"registry.api_prefix": REG_API, "events.jetstream": False, "events.api_prefix": EVENTS_API}


def logged_as(user: str) -> str:
    """How the server's log names a user's connection: `"<account>/user:<name>"`."""
    return f'"{ACCOUNTS[user]}/user:{"orchestrator" if user == ANONYMOUS else user}"'


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


def registry_js(conn: Conn) -> JetStreamContext:
    """JetStream for the registry's buckets, as `conn`'s account reaches them."""
    return conn.nc.jetstream(prefix=JS_API if conn.user == "admin" else REG_API, timeout=WAIT)


def events_js(conn: Conn) -> JetStreamContext:
    """JetStream for the event log, as `conn`'s account reaches it (LIVE, OBS and REG import it alike)."""
    return conn.nc.jetstream(prefix=EVENTS_API, timeout=WAIT)


async def attempt(who: Conn, action: Callable[[], Awaitable[object]]) -> str:
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


# --- what `extension-loader setup` makes, as admin ----------------------------------------------------------------


async def administer(url: str) -> None:
    """As `admin`, with plain nats-py calls: EXTENSION_EVENTS in EVENTS (through `$JS.events.API`) over the event
    subjects, and in REG the index (Key-Value, history, direct gets) and the archives (Object Store). The log
    answers direct gets too, so that the attacks have that way of reading it as well."""
    async with connect(url, "admin") as admin:
        log = StreamConfig(name=STREAM, subjects=EVENT_SUBJECTS, storage=StorageType.FILE, allow_direct=True)
        await events_js(admin).add_stream(log)
        js = registry_js(admin)
        await js.create_key_value(KeyValueConfig(bucket=INDEX, history=16, direct=True, storage=StorageType.FILE))
        await js.create_object_store(ARCHIVES, storage=StorageType.FILE)


@dataclass(frozen=True)
class StreamState:
    config: dict[str, Any]
    messages: int
    first_seq: int
    last_seq: int


async def streams(admin: Conn) -> dict[str, StreamState]:
    """Every stream of REG and EVENTS, as admin sees it: settings and contents."""
    found: dict[str, StreamState] = {}
    for js in (registry_js(admin), events_js(admin)):
        for info in await js.streams_info():
            state = info.state
            found[info.config.name or ""] = StreamState(
                info.config.as_dict(), state.messages, state.first_seq, state.last_seq
            )
    return found


async def settled_streams(admin: Conn) -> dict[str, StreamState]:
    """`streams`, once JetStream has taken up every API request queued before now in REG and EVENTS: it handles
    them in a pool of workers, in the order they came, and admin's own unchanged update of each stream goes
    through the same queue."""
    for name, state in (await streams(admin)).items():
        js = events_js(admin) if name == STREAM else registry_js(admin)
        await js.update_stream(StreamConfig.from_response(dict(state.config)))
    return await streams(admin)


class LogReader:
    """Reads EXTENSION_EVENTS from what it holds now on, as admin (through its import of EVENTS's API)."""

    def __init__(self, admin: Conn) -> None:
        self._js = events_js(admin)
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        last = (await self._js.stream_info(STREAM)).state.last_seq
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=last + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=2 * WAIT,
            mem_storage=True,
        )
        self._sub = await self._js.pull_subscribe("extensions.>", stream=STREAM, config=config)

    async def next(self, count: int) -> list[Msg]:
        """The next `count` messages the log stores."""
        assert self._sub is not None
        with anyio.fail_after(WAIT):
            return [(await self._sub.fetch(1, timeout=WAIT))[0] for _ in range(count)]

    async def until(self, data: bytes) -> list[Msg]:
        """What the log stored before the message `data` (a marker), once it has stored that."""
        assert self._sub is not None
        stored: list[Msg] = []
        with anyio.fail_after(WAIT):
            while True:
                (msg,) = await self._sub.fetch(1, timeout=WAIT)
                if msg.data == data:
                    return stored
                stored.append(msg)


# --- where others listen, and the markers that show what reached them ---------------------------------------------


class Heard:
    """What one subscription received, in order."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self._more = anyio.Event()

    async def add(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self._more.set()
        self._more = anyio.Event()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(WAIT):
            while len(self.msgs) < count:
                await self._more.wait()

    async def before(self, data: bytes) -> list[Msg]:
        """Waits for the message `data` (a marker); returns what came before it since the last marker."""
        return await self.until(lambda msg: msg.data == data)

    async def until(self, marker: Callable[[Msg], bool]) -> list[Msg]:
        """Waits for a message that `marker` matches; returns what came before it since the last marker."""
        with anyio.fail_after(WAIT):
            while not any(marker(m) for m in self.msgs):
                await self._more.wait()
        i = next(i for i, m in enumerate(self.msgs) if marker(m))
        before, self.msgs = self.msgs[:i], self.msgs[i + 1 :]
        return before


VICTIM = "victim"  # the last token of each inbox subject an attack aims at: `_INBOX.<user>.victim`
# Every place another user listens: (user, subject, queue group).
PATHS: dict[str, tuple[str, str, str]] = {
    **{f"{user} inbox": (user, f"{inbox(user)}.{VICTIM}", "") for user in RUNTIME},
    **{
        f"{user} {subject}": (user, subject, "")
        for user in ("orchestrator", "loader", "observer")
        for subject in EVENT_SUBJECTS
    },
    "loader extensions.load": ("loader", "extensions.load", "extension-loader"),
}
QUEUE_PATH = "loader extensions.load"
MARK_KEY = "mark"


@dataclass
class Others:
    """Connections of every user listening on the paths of PATHS, a loader that publishes genuine events, and
    admin reading the event log."""

    conns: dict[str, Conn]
    heard: dict[str, Heard]
    log: LogReader
    marks: Iterator[int] = field(default_factory=count)

    async def settle(self) -> tuple[dict[str, list[Msg]], list[Msg]]:
        """Sends a marker down every path; returns what each path heard before its marker, and what the event log
        stored before the markers (both since the last settle)."""
        mark = f"marker-{next(self.marks)}".encode()
        publisher_index = await registry_js(self.conns["publisher"]).key_value(INDEX)
        await publisher_index.put(MARK_KEY, mark)
        for user in RUNTIME:  # a direct get of the marker, answered into that user's own victim inbox
            nc = self.conns[user].nc
            await nc.publish(
                f"{REG_API}.DIRECT.GET.{INDEX_STREAM}.$KV.{INDEX}.{MARK_KEY}", b"", reply=f"{inbox(user)}.{VICTIM}"
            )
        for subject in EVENT_SUBJECTS:  # a genuine loader's events
            await self.conns["genuine"].nc.publish(subject, mark)
        if QUEUE_PATH in self.heard:  # a request, as the orchestrator sends it
            await self.conns["orchestrator"].nc.publish("extensions.load", mark)
        for conn in self.conns.values():
            await conn.nc.flush()
        heard = {path: await self.heard[path].before(mark) for path in self.heard}
        stored = await self.log.until(mark)
        second = await self.log.until(mark)  # both event subjects carry the marker: nothing stored between them
        return heard, stored + second


@asynccontextmanager
async def others_listening(url: str, *, serving: bool = False) -> AsyncIterator[Others]:
    """`serving`: the service is running, in the queue group of the request subjects, where it would take its
    share of the markers: no one else listens there."""
    async with AsyncExitStack() as stack:
        conns = {user: await stack.enter_async_context(connect(url, user)) for user in (*RUNTIME, "admin")}
        conns["genuine"] = await stack.enter_async_context(connect(url, "loader"))
        heard = {path: Heard() for path in PATHS if not (serving and path == QUEUE_PATH)}
        for path in heard:
            user, subject, queue = PATHS[path]
            await conns[user].nc.subscribe(subject, queue=queue, cb=heard[path].add)
        for conn in conns.values():
            await flush_subscriptions(conn.nc)
        log = LogReader(conns["admin"])
        await log.start()
        others = Others(conns, heard, log)
        await others.settle()  # every path works, and the log is read up to now
        yield others
        assert all(not conn.violations for conn in conns.values()), {u: c.violations for u, c in conns.items()}


def marked(msg: Msg, subject: str) -> bool:
    """Whether a message that arrived on `subject` is recognisably not what a client published there: a
    JetStream delivery keeps its stored subject and carries a `$JS.ACK.` reply, a direct-get answer carries
    `Nats-Stream`, a pull consumer's end of batch is a status without a body."""
    headers = msg.headers or {}
    return (
        msg.subject != subject
        or "Nats-Stream" in headers
        or (msg.reply or "").startswith("$JS.ACK.")
        or ("Status" in headers and not msg.data)
    )


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


async def _receive_one(sub_conn: Conn, subject: str, send: Callable[[], Awaitable[object]], **sub: Any) -> Msg:
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
    """Publish on extensions.loaded; another client (observer, in its own account) receives it."""
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
    """Replay EXTENSION_EVENTS through a durable pull consumer (`$JS.events.API`): create it, fetch an event that a
    loader published plainly (the log captured it), acknowledge it."""
    await world.helpers["loader"].nc.publish("extensions.loaded", b"stored")
    sub = await events_js(who).pull_subscribe("extensions.loaded", durable="replay", stream=STREAM)
    (msg,) = await sub.fetch(1, timeout=WAIT)
    assert msg.data == b"stored"
    await msg.ack_sync()


async def check_the_log(world: World, who: Conn) -> None:
    """Read EXTENSION_EVENTS's settings (`$JS.events.API.STREAM.INFO`): the loader checks that the log is there."""
    info = await events_js(who).stream_info(STREAM)
    assert info.config.subjects == EVENT_SUBJECTS


async def create_event_stream(world: World, who: Conn) -> None:
    """Create EXTENSION_EVENTS over the event subjects (`$JS.events.API`), as the loader did before `setup`."""
    await events_js(who).add_stream(StreamConfig(name=STREAM, subjects=EVENT_SUBJECTS))


async def create_stream(world: World, who: Conn) -> None:
    """Create a JetStream stream beside the registry's (`$JS.reg.API`)."""
    await registry_js(who).add_stream(StreamConfig(name="OTHER", subjects=["other.>"]))


async def delete_event_stream(world: World, who: Conn) -> None:
    """Delete EXTENSION_EVENTS (`$JS.events.API`)."""
    assert await events_js(who).delete_stream(STREAM)


# --- private inboxes ---

# JetStream answers a request itself, into the requester's inbox; every runtime user may ask this one.
INFO_REQUEST = f"{REG_API}.STREAM.INFO.{INDEX_STREAM}"


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
    """One index record and one archive, written by the publisher into the buckets admin made."""
    js = registry_js(publisher)
    index = await js.key_value(INDEX)
    await index.create(RECORD_KEY, b'{"name": "etcd"}')
    archives = await js.object_store(ARCHIVES)
    archive = bytes(range(256)) * (5 * CHUNK // 256 // 2)  # two and a half chunks
    name = f"sha256/{sha256(archive).hexdigest()}"
    await archives.put(name, archive, meta=ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=CHUNK)))
    return Registry(archive, name)


def _registry(world: World) -> Registry:
    assert world.registry is not None
    return world.registry


async def _index(conn: Conn) -> KeyValue:
    return await registry_js(conn).key_value(INDEX)


async def _archives(conn: Conn) -> ObjectStore:
    return await registry_js(conn).object_store(ARCHIVES)


def _reader(**config: Any) -> ConsumerConfig:
    """A pull consumer as readers make them: acknowledging nothing, in memory, gone once left alone."""
    return ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=WAIT, mem_storage=True, **config)


async def create_buckets(world: World, who: Conn) -> None:
    """Create the registry's buckets: the Key-Value index and the Object Store of archives (`$JS.reg.API`)."""
    js = registry_js(who)
    await js.create_key_value(KeyValueConfig(bucket="another-index", history=16))
    await js.create_object_store("another-archive")


async def change_a_bucket(world: World, who: Conn) -> None:
    """Change a bucket's settings: the index's history."""
    js = registry_js(who)
    config = (await js.stream_info(INDEX_STREAM)).config
    config.max_msgs_per_subject = 32
    assert (await js.update_stream(config)).config.max_msgs_per_subject == 32


async def read_the_index(world: World, who: Conn) -> None:
    """Read the index as readers do across accounts: a record by direct get (by key and by revision) and by
    message get, and a pull consumer of one's own (last per key, then what comes) that gets the record, then a
    live update by the publisher, and is deleted once read."""
    js = registry_js(who)
    index = await js.key_value(INDEX)
    entry = await index.get(RECORD_KEY)
    assert entry.value == b'{"name": "etcd"}'
    assert (await index.get(RECORD_KEY, revision=entry.revision)).value == entry.value
    assert (await js.get_last_msg(INDEX_STREAM, f"$KV.{INDEX}.{RECORD_KEY}", direct=False)).data == entry.value
    config = _reader(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    sub = await js.pull_subscribe(f"$KV.{INDEX}.taskserv.>", stream=INDEX_STREAM, config=config)
    (first,) = await sub.fetch(1, timeout=WAIT)
    assert first.subject == f"$KV.{INDEX}.{RECORD_KEY}"
    await (await _index(world.helpers["publisher"])).put("taskserv.live", b"{}")
    (live,) = await sub.fetch(1, timeout=WAIT)
    assert live.subject == f"$KV.{INDEX}.taskserv.live"
    consumer = (await sub.consumer_info()).name
    assert await js.delete_consumer(INDEX_STREAM, consumer)


async def follow_a_large_index(world: World, who: Conn) -> None:
    """Read an index of a few megabytes with one fetch of a pull consumer: the whole batch arrives (its API is
    exported as a stream of answers; as a single answer only the first record would)."""
    publisher = await _index(world.helpers["publisher"])
    large = [f"taskserv.large{i}" for i in range(3)]
    for key in large:
        await publisher.put(key, bytes(LARGE_VALUE))
    sub = await registry_js(who).pull_subscribe(f"$KV.{INDEX}.taskserv.>", stream=INDEX_STREAM, config=_reader())
    batch = await sub.fetch(4, timeout=WAIT)
    assert [msg.subject.removeprefix(f"$KV.{INDEX}.") for msg in batch] == [RECORD_KEY, *large]


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
    """Read an archive as the loader does: its info, then its chunks through a pull consumer of one's own,
    deleted once read."""
    registry = _registry(world)
    info = await (await _archives(who)).get_info(registry.name)
    js = registry_js(who)
    sub = await js.pull_subscribe(f"$O.{ARCHIVES}.C.{info.nuid}", stream=ARCHIVES_STREAM, config=_reader())
    received = bytearray()
    while len(received) < len(registry.archive):
        for msg in await sub.fetch(8, timeout=WAIT):
            received += msg.data
    assert bytes(received) == registry.archive
    assert await js.delete_consumer(ARCHIVES_STREAM, (await sub.consumer_info()).name)


async def put_an_archive(world: World, who: Conn) -> None:
    """Put an archive into the Object Store; the loader sees its info."""
    meta = ObjectMeta(name="sha256/forged", options=ObjectMetaOptions(max_chunk_size=CHUNK))
    await (await _archives(who)).put("sha256/forged", b"forged", meta=meta)
    assert (await (await _archives(world.helpers["loader"])).get_info("sha256/forged")).size == len(b"forged")


async def delete_an_archive(world: World, who: Conn) -> None:
    """Delete the archive with nats-py's ObjectStore.delete: it marks the metadata deleted, then purges the
    chunks, a stream purge that only admin may make; the loader finds it gone."""
    name = _registry(world).name
    await (await _archives(who)).delete(name)
    with pytest.raises(ObjectNotFoundError):
        await (await _archives(world.helpers["loader"])).get_info(name)


async def purge_the_archives(world: World, who: Conn) -> None:
    """Purge the archives' stream: every chunk and all metadata gone."""
    assert await registry_js(who).purge_stream(ARCHIVES_STREAM)
    assert (await registry_js(world.helpers["admin"]).stream_info(ARCHIVES_STREAM)).state.messages == 0


# What an action needs before it beside what admin made: the service started as the loader user, or the
# registry's buckets with a record and an archive.
NEEDS = {
    "request": "service",
    "fleet_request": "service",
    "srv_ping": "service",
    "srv_stats": "service",
    "change_a_bucket": "registry",
    "read_the_index": "registry",
    "follow_a_large_index": "registry",
    "write_the_index": "registry",
    "delete_from_the_index": "registry",
    "read_an_archive": "registry",
    "put_an_archive": "registry",
    "delete_an_archive": "registry",
    "purge_the_archives": "registry",
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
    "check_the_log": check_the_log,
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
    "write_the_index": write_the_index,
    "delete_from_the_index": delete_from_the_index,
    "read_an_archive": read_an_archive,
    "put_an_archive": put_an_archive,
    "delete_an_archive": delete_an_archive,
    "purge_the_archives": purge_the_archives,
}

A, R = "allowed", "refused"
# Replies from the loader reach the requester's private inbox through allow_responses: `request`,
# `fleet_request`, `srv_*` and `serve_*` show it for every user that may ask. No runtime user creates, changes,
# purges or deletes a stream: admin alone does (`extension-loader setup`).
#                         orchestrator anonymous loader observer publisher
MATRIX: dict[str, tuple[str, str, str, str, str]] = {
    "request": (A, A, R, R, R),
    "fleet_request": (A, A, R, R, R),  # as the single-instance requests
    "srv_ping": (A, A, A, A, R),  # the loader: its container health check; the observer: through its import
    "srv_stats": (A, A, R, A, R),
    "publish_event": (R, R, A, R, R),
    "subscribe_event": (A, A, A, A, R),
    "serve_requests": (R, R, A, R, R),
    "serve_in_another_group": (R, R, R, R, R),
    "serve_fleet": (R, R, A, R, R),
    "snoop_requests": (R, R, R, R, R),
    "replay_events": (R, R, R, A, R),
    "check_the_log": (R, R, A, A, R),
    "create_event_stream": (R, R, R, R, R),
    "create_stream": (R, R, R, R, R),
    "delete_event_stream": (R, R, R, R, R),
    "reply_to_own_inbox": (A, A, A, A, A),
    "read_another_inbox": (R, R, R, R, R),
    "read_every_inbox": (R, R, R, R, R),
    "forge_a_reply": (R, R, R, R, R),
    "create_buckets": (R, R, R, R, R),
    "change_a_bucket": (R, R, R, R, R),
    "read_the_index": (A, A, A, A, A),  # `extension-loader search`, for people too
    "follow_a_large_index": (A, A, A, A, A),
    "write_the_index": (R, R, R, R, A),
    "delete_from_the_index": (R, R, R, R, A),
    "read_an_archive": (R, R, A, R, A),
    "put_an_archive": (R, R, R, R, A),
    "delete_an_archive": (R, R, R, R, R),  # the publisher: its metadata is marked deleted, the purge refused
    "purge_the_archives": (R, R, R, R, R),
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
async def test_permission_matrix(
    administered: NatsServer, tmp_path: Path, user: str, action: str, expected: str
) -> None:
    secured = administered
    async with AsyncExitStack() as stack:
        helpers = {u: await stack.enter_async_context(connect(secured.url, u)) for u in PASSWORDS}
        service = registry = None
        if (need := NEEDS.get(action)) == "registry":
            registry = await make_registry(helpers["publisher"])
        elif need:
            service = await stack.enter_async_context(running_service(loader_config(secured.url, tmp_path)))
        world = World(secured, helpers, service, registry)
        who = await stack.enter_async_context(connect(secured.url, user))
        outcome = await attempt(who, partial(ACTIONS[action], world, who))
        assert outcome == expected, (
            f"{user} {action}: {outcome}, the matrix says {expected} ({ACTIONS[action].__doc__})\n"
            f"{who.violations}\n\n{matrix_table()}"
        )
        if expected == R:
            # The server logs it too, with the account and the user (anonymous is the no_auth_user, orchestrator).
            kind = "Publish" if "for publish to" in who.violations[0] else "Subscription"
            await wait_for_log(secured, f"{logged_as(user)} - {kind} Violation - Subject ")


def test_the_matrix_covers_every_user_and_action() -> None:
    assert set(MATRIX) == set(ACTIONS)
    print("\n" + matrix_table())


# --- streams: admin alone makes, changes and deletes them ------------------------------------------------------------


def stream_commands(states: dict[str, StreamState]) -> list[tuple[str, bytes]]:
    """(subject after the API prefix, body) of every command that would make, change, empty or delete a stream:
    each stream taken over the orchestrator's inbox and the event and request subjects, sealed, purged, deleted;
    and a new stream over every inbox."""
    commands: list[tuple[str, bytes]] = []
    for name in STREAMS:
        config = states[name].config
        subjects = config.get("subjects") or []
        taken = [
            *subjects,
            "_INBOX.orchestrator.>",
            *(s for s in [*EVENT_SUBJECTS, "extensions.load"] if s not in subjects),
        ]
        for change in ({"subjects": taken}, {"sealed": True}, {"deny_delete": True, "max_age": 1_000_000}):
            body = json.dumps({**config, **change}).encode()
            commands += [(f"STREAM.UPDATE.{name}", body), (f"STREAM.CREATE.{name}", body)]
        commands += [(f"STREAM.PURGE.{name}", b"{}"), (f"STREAM.DELETE.{name}", b"")]
    spy = json.dumps({"name": "SPY", "subjects": ["_INBOX.>"]}).encode()
    return [*commands, ("STREAM.CREATE.SPY", spy)]


async def _a_publish_still_works(others: Others) -> None:
    """A loader's event is logged and heard, the publisher's write is read back by a loader."""
    heard, stored = await others.settle()
    assert stored == [] and all(msgs == [] for msgs in heard.values())
    revision = await (await _index(others.conns["publisher"])).put("taskserv.after", b"{}")
    assert (await (await _index(others.conns["loader"])).get("taskserv.after")).revision == revision


@pytest.mark.parametrize("user", [*RUNTIME, ANONYMOUS])
async def test_no_runtime_user_makes_changes_empties_or_deletes_a_stream(administered: NatsServer, user: str) -> None:
    """Every stream command under every JetStream API prefix (`$JS.API`, `$JS.reg.API`, `$JS.events.API`), for
    every stream (the log, the index, the archives): taking the orchestrator's inbox or the event subjects into a
    stream, sealing, a time to live, purging, deleting, making a new stream. Each is refused; every stream keeps
    its settings and contents; events and writes still work afterwards."""
    async with others_listening(administered.url) as others:
        await make_registry(others.conns["publisher"])
        admin = others.conns["admin"]
        before = await streams(admin)
        for prefix in PREFIXES:
            for subject, body in stream_commands(before):
                async with connect(administered.url, user) as who:
                    outcome = await attempt(who, partial(who.nc.request, f"{prefix}.{subject}", body, timeout=WAIT))
                assert outcome == R, f"{user}: {prefix}.{subject}: {outcome}"
        assert await settled_streams(admin) == before
        await _a_publish_still_works(others)


async def test_admin_makes_changes_and_deletes_streams_in_reg_and_events(administered: NatsServer) -> None:
    """`admin` alone manages streams: in REG with `$JS.API`, in EVENTS through `$JS.events.API`; it takes no part
    in live traffic."""
    async with connect(administered.url, "admin") as admin:
        for js in (registry_js(admin), events_js(admin)):
            await js.add_stream(StreamConfig(name="SCRATCH", subjects=["scratch.>"]))
            config = (await js.stream_info("SCRATCH")).config
            config.max_msgs = 10
            assert (await js.update_stream(config)).config.max_msgs == 10
            assert await js.purge_stream("SCRATCH")
            assert await js.delete_stream("SCRATCH")
        assert set(await streams(admin)) == set(STREAMS)
        await admin.nc.publish("extensions.unloaded", b"{}")
        await flush_subscriptions(admin.nc)  # two round trips: the PUB has reached the server before a PING
        assert admin.violations == ['nats: permissions violation for publish to "extensions.unloaded"']
    await wait_for_log(administered, f'{logged_as("admin")} - Publish Violation - Subject "extensions.unloaded"')


# --- what a reader can have JetStream send elsewhere -----------------------------------------------------------------
# NATS checks no permission on a reply subject, and JetStream publishes its answers itself: whoever reads a stored
# message by request (a direct get, a message get, a pull consumer's next messages) can have it sent onto any
# subject of the account the answer goes back to. The values read are planted first, one per place they are to
# be sent: as index records `cmd.<i>` and archives `cmd/<i>` (by the publisher) and events (by a loader).


@dataclass(frozen=True)
class Planted:
    replies: list[str]  # where the value i is to be sent
    nuids: list[str]  # the archive cmd/<i>'s chunks ("" when empty: no chunk)
    log_seqs: list[int]  # the event's sequence in EXTENSION_EVENTS


async def plant(others: Others, pairs: Sequence[tuple[str, bytes]]) -> Planted:
    publisher = others.conns["publisher"]
    index, archives = await _index(publisher), await _archives(publisher)
    nuids = []
    for i, (_, body) in enumerate(pairs):
        await index.put(f"cmd.{i}", body)
        if body:
            meta = ObjectMeta(name=f"cmd/{i}", options=ObjectMetaOptions(max_chunk_size=CHUNK))
            nuids.append((await archives.put(f"cmd/{i}", body, meta=meta)).nuid)
        else:
            nuids.append("")  # an empty object has no chunk to read
        await others.conns["genuine"].nc.publish("extensions.loaded", body)
    await others.conns["genuine"].nc.flush()
    logged = await others.log.next(len(pairs))
    await others.settle()  # everyone has heard the planted events
    return Planted([reply for reply, _ in pairs], nuids, [msg.metadata.sequence.stream for msg in logged])


@dataclass(frozen=True)
class Route:
    """One way to read a planted value by request. After the requests, one of the same kind into the reader's own
    inbox: once that is answered, every answer before it has been sent. A pull consumer's answers come from that
    consumer alone, so each value is read by a consumer of its own, and each consumer asked again."""

    name: str
    users: tuple[str, ...]  # who may
    api: str
    stream: str
    kind: str  # "direct", "get", "info", "pull"

    async def run(self, who: Conn, planted: Planted) -> int:
        """Sends each planted value to its reply subject; returns how many were sent."""
        sent = 0
        for i, reply in enumerate(planted.replies):
            if self.stream == ARCHIVES_STREAM and not planted.nuids[i]:
                continue  # an empty archive has no chunk to read
            if self.kind == "pull":
                consumer = f"{self.name.replace(' ', '-')}-{i}"
                config = _reader(name=consumer, **self._one(planted, i))
                await who.nc.jetstream(prefix=self.api, timeout=WAIT).add_consumer(self.stream, config=config)
                subject = f"{self.api}.CONSUMER.MSG.NEXT.{self.stream}.{consumer}"
                await who.nc.publish(subject, json.dumps({"batch": 1}).encode(), reply=reply)
                await _ask(who, subject, json.dumps({"batch": 1, "no_wait": True}).encode())
            else:
                await who.nc.publish(*self._request(planted, i), reply=reply)
            sent += 1
        if self.kind != "pull":
            await who.nc.request(*self._request(planted, 0), timeout=WAIT)
        return sent

    def _one(self, planted: Planted, i: int) -> dict[str, Any]:
        """A consumer whose first message is the planted value i."""
        if self.stream == STREAM:
            return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": planted.log_seqs[i]}
        if self.stream == INDEX_STREAM:
            return {"filter_subject": f"$KV.{INDEX}.cmd.{i}"}
        return {"filter_subject": f"$O.{ARCHIVES}.C.{planted.nuids[i]}"}

    def _request(self, planted: Planted, i: int) -> tuple[str, bytes]:
        api, stream = self.api, self.stream
        if self.kind == "info":
            return f"{api}.STREAM.INFO.{stream}", b""
        if stream == STREAM:  # the log: by sequence
            body = json.dumps({"seq": planted.log_seqs[i]}).encode()
            return (f"{api}.DIRECT.GET.{stream}" if self.kind == "direct" else f"{api}.STREAM.MSG.GET.{stream}"), body
        subject = f"$KV.{INDEX}.cmd.{i}" if stream == INDEX_STREAM else f"$O.{ARCHIVES}.C.{planted.nuids[i]}"
        if self.kind == "direct":
            return f"{api}.DIRECT.GET.{stream}.{subject}", b""
        return f"{api}.STREAM.MSG.GET.{stream}", json.dumps({"last_by_subj": subject}).encode()


async def _ask(who: Conn, subject: str, body: bytes) -> Msg:
    """The first answer to a request, whatever its subject (a pull consumer's message keeps its stored subject, so
    nats-py's `request`, which matches answers by subject, never sees it)."""
    answers = Heard()
    reply = who.nc.new_inbox()
    sub = await who.nc.subscribe(reply, cb=answers.add)
    await who.nc.publish(subject, body, reply=reply)
    await answers.wait_for(1)
    await sub.unsubscribe()
    return answers.msgs[0]


READERS = ("orchestrator", "loader", "observer", "publisher")
ROUTES = (
    Route("index direct get", READERS, REG_API, INDEX_STREAM, "direct"),
    Route("index message get", READERS, REG_API, INDEX_STREAM, "get"),
    Route("index info", READERS, REG_API, INDEX_STREAM, "info"),
    Route("index pull", READERS, REG_API, INDEX_STREAM, "pull"),
    Route("archive direct get", ("loader", "publisher"), REG_API, ARCHIVES_STREAM, "direct"),
    Route("archive message get", ("loader", "publisher"), REG_API, ARCHIVES_STREAM, "get"),
    Route("archive pull", ("loader", "publisher"), REG_API, ARCHIVES_STREAM, "pull"),
    Route("log info", ("loader", "observer"), EVENTS_API, STREAM, "info"),
    Route("log direct get", ("observer",), EVENTS_API, STREAM, "direct"),
    Route("log message get", ("observer",), EVENTS_API, STREAM, "get"),
    Route("log pull", ("observer",), EVENTS_API, STREAM, "pull"),
)


@pytest.mark.parametrize("user", RUNTIME)
async def test_no_jetstream_answer_becomes_a_stream_command(administered: NatsServer, user: str) -> None:
    """Every reader reads, in every way it may (direct get, message get, stream info, a pull consumer's next
    message; the index, the archives, the log), values shaped as the bodies of stream commands (empty: delete;
    `{}`: purge; a stream's settings sealed, or over the orchestrator's inbox and the event subjects: update; a
    new stream over every inbox: create), each sent onto its command's subject under every API prefix. Inside an
    account with JetStream such an answer is taken as the command (test_nats_takes_a_jetstream_answer_as_a_request
    shows it); every answer to these users comes back into their own account, where no JetStream API is, so none
    acts: every stream keeps its settings and contents, none is added, and writes and events still work."""
    async with others_listening(administered.url) as others:
        admin = others.conns["admin"]
        commands = [
            (f"{prefix}.{subject}", body)
            for prefix in PREFIXES
            for subject, body in stream_commands(await streams(admin))
        ]
        planted = await plant(others, commands)
        before = await streams(admin)
        attacker = others.conns[user]
        for route in ROUTES:
            if user in route.users:
                assert await route.run(attacker, planted) > 0
        assert await settled_streams(admin) == before
        assert attacker.violations == []
        await _a_publish_still_works(others)


async def test_nats_takes_a_jetstream_answer_as_a_request(tmp_path: Path) -> None:
    """Why no user but admin is in an account with JetStream (nats.conf, PUB): in one account, a user that may only
    write a bucket and read it by direct get deletes a stream, by naming `$JS.API.STREAM.DELETE.<stream>` as
    the reply of a direct get of an empty value. (Not nats.conf: a server of this test's own, whose admin hears
    JetStream's advisories.)"""
    conf = tmp_path / "one-account.conf"
    conf.write_text(
        'listen: 127.0.0.1:-1\njetstream { store_dir: "./js" }\n'
        "accounts { REG: { jetstream: enabled, users: [\n"
        '  {user: admin, password: a, permissions: {publish: ["$JS.API.>"],\n'
        '   subscribe: ["_INBOX.admin.>", "$JS.EVENT.ADVISORY.>"]}}\n'
        '  {user: writer, password: w, permissions: {publish: ["$KV.bucket.>", "$JS.API.DIRECT.GET.KV_bucket.>"],\n'
        '   subscribe: ["_INBOX.writer.>"]}}\n'
        "] } }\n"
    )
    server = NatsServer(["-c", str(conf), "-p", "-1", "-m", "-1"], cwd=tmp_path).start()
    try:
        admin_nc = await nats.connect(server.url, user="admin", password="a", inbox_prefix="_INBOX.admin")
        writer_nc = await nats.connect(server.url, user="writer", password="w", inbox_prefix="_INBOX.writer")
        try:
            admin_js = admin_nc.jetstream()
            await admin_js.create_key_value(KeyValueConfig(bucket="bucket", direct=True))
            await admin_js.add_stream(StreamConfig(name="VICTIM", subjects=["victim.>"]))
            deleted = Heard()
            await admin_nc.subscribe("$JS.EVENT.ADVISORY.STREAM.DELETED.VICTIM", cb=deleted.add)
            await flush_subscriptions(admin_nc)
            await writer_nc.jetstream().publish("$KV.bucket.empty", b"")
            direct_get = "$JS.API.DIRECT.GET.KV_bucket.$KV.bucket.empty"
            await writer_nc.publish(direct_get, b"", reply="$JS.API.STREAM.DELETE.VICTIM")
            await deleted.wait_for(1)
            assert [info.config.name for info in await admin_js.streams_info()] == ["KV_bucket"]
        finally:
            await writer_nc.close()
            await admin_nc.close()
    finally:
        server.stop()


# --- what a reader can have a consumer deliver, and JetStream answer, onto another user's subjects -----------------

FORGED = msgspec.json.encode(
    {
        "event_id": "forged",
        "reason": "yanked",
        "extension_type": "taskserv",
        "name": "etcd",
        "version": "3.5.0",
        "instance_id": "forged",
        "timestamp": "2026-01-01T00:00:00Z",
    }
)
# Every subject another user listens on (PATHS), as an attack names it.
TARGETS = sorted({subject for _, subject, _ in PATHS.values()})


def lands(attacker: str, path: str) -> bool:
    """Whether something sent in `attacker`'s account onto the path's subject reaches that path: the same account
    (LIVE is the orchestrator's, anonymous's and the loader's)."""
    user, _, _ = PATHS[path]
    return ACCOUNTS[user] == ACCOUNTS[attacker]


def not_an_event(msg: Msg, subject: str) -> bool:
    """A message that arrived on `subject` and is recognisably not what a client published there: `marked`, or a
    JetStream API answer (its body names its type)."""
    if marked(msg, subject):
        return True
    try:
        kind = msgspec.json.decode(msg.data).get("type", "")
    except (msgspec.DecodeError, AttributeError):
        return False
    return isinstance(kind, str) and kind.startswith("io.nats.jetstream.api.v1.")


@pytest.mark.parametrize("user", [*RUNTIME, ANONYMOUS])
async def test_a_read_answered_onto_another_s_subject_stays_in_the_reader_s_account(
    administered: NatsServer, user: str
) -> None:
    """A forged event, written into the index and an archive by the publisher (and an event of a loader's, in the
    log), read in every way each user may and sent onto every subject another user listens on: each inbox, the
    event subjects, the request subject. NATS delivers what lands in the reader's own account: for LIVE's users,
    onto LIVE's subscribers, marked as JetStream's (the stored subject and a `$JS.ACK.` reply, a `Nats-Stream`
    header, a status, an API answer's type), never as a plain event; for the observer and the publisher, alone
    in their accounts, to no one else. The event log stores none of it."""
    async with others_listening(administered.url) as others:
        planted = await plant(others, [(target, FORGED) for target in TARGETS])
        assert isinstance(msgspec.json.decode(FORGED, type=ExtensionUnloaded), ExtensionUnloaded)
        async with connect(administered.url, user) as attacker:
            sent = {route.name: await route.run(attacker, planted) for route in ROUTES if _reads(user) in route.users}
            assert attacker.violations == []
        heard, stored = await others.settle()
    assert stored == [], "the event log stored what an attack sent"
    for path, msgs in heard.items():
        _, subject, _ = PATHS[path]
        if lands(user, path):  # one answer from each way of reading
            assert len(msgs) == len(sent), (path, sent, msgs)
            assert all(not_an_event(msg, subject) for msg in msgs), [(m.subject, m.reply, m.headers) for m in msgs]
        else:
            assert msgs == [], f"{path} heard {user}'s attack: {msgs}"


def _reads(user: str) -> str:
    return "orchestrator" if user == ANONYMOUS else user


CONSUMERS = {  # the streams each user may make consumers on
    "orchestrator": (INDEX_STREAM,),
    ANONYMOUS: (INDEX_STREAM,),
    "loader": (INDEX_STREAM, ARCHIVES_STREAM),
    "observer": (INDEX_STREAM, STREAM),
    "publisher": (INDEX_STREAM, ARCHIVES_STREAM),
}
CYCLE = 10081  # "consumer deliver subject forms a cycle"


@pytest.mark.parametrize("user", [*RUNTIME, ANONYMOUS])
async def test_a_push_consumer_delivers_to_no_one_outside_its_stream_s_account(
    administered: NatsServer, user: str
) -> None:
    """NATS checks no permission on where a push consumer delivers. Every reader makes push consumers on every
    stream it may (the index with the publisher's forged event, the archives, the log) delivering onto every
    subject another user listens on. A consumer delivers only to subscribers in its stream's account (REG,
    EVENTS), where no one else listens: each is made but finds no one (not bound, nothing delivered); one of the
    log onto an event subject is refused as a cycle. No one hears anything, the log stores nothing. admin's own
    consumer onto its own inbox, beside them, is bound and delivers: the difference is the account."""
    async with others_listening(administered.url) as others:
        await plant(others, [("", FORGED)])
        async with connect(administered.url, user) as attacker:
            for stream in CONSUMERS[user]:
                js = attacker.nc.jetstream(prefix=EVENTS_API if stream == STREAM else REG_API, timeout=WAIT)
                for target in TARGETS:
                    config = ConsumerConfig(deliver_subject=target, ack_policy=AckPolicy.NONE, inactive_threshold=WAIT)
                    try:
                        info = await js.add_consumer(stream, config=config)
                    except APIError as exc:
                        assert (stream, target, exc.err_code) in [(STREAM, s, CYCLE) for s in EVENT_SUBJECTS], exc
                        continue
                    assert (stream, target) not in [(STREAM, s) for s in EVENT_SUBJECTS]
                    assert info.delivered is not None and info.delivered.stream_seq == 0, (stream, target, info)
                    assert not info.push_bound, (stream, target, info)
            assert attacker.violations == []
        heard, stored = await others.settle()
        assert stored == [] and all(msgs == [] for msgs in heard.values()), (stored, heard)
        admin = others.conns["admin"]
        seen = Heard()
        await admin.nc.subscribe(f"{inbox('admin')}.{VICTIM}", cb=seen.add)
        await flush_subscriptions(admin.nc)
        config = ConsumerConfig(
            deliver_subject=f"{inbox('admin')}.{VICTIM}", ack_policy=AckPolicy.NONE, filter_subject=f"$KV.{INDEX}.cmd.0"
        )
        assert (await registry_js(admin).add_consumer(INDEX_STREAM, config=config)).push_bound
        assert await seen.before(FORGED) == []  # it came, as the first


# --- what a loader's reply and a loader's acknowledgement can do -------------------------------------------------


async def _respond(msg: Msg, *, only_inboxes: bool) -> None:
    """A loader's answer, as the service gives it: only into an inbox (a requester's, or one a service import
    mapped) when `only_inboxes`."""
    if msg.reply and (not only_inboxes or msg.reply.startswith(("_INBOX.", "_R_."))):
        await msg.respond(b'{"answered": true}')


@pytest.mark.parametrize("only_inboxes", [False, True], ids=["answering-anywhere", "answering-only-inboxes"])
async def test_a_request_whose_reply_is_an_event_subject(administered: NatsServer, only_inboxes: bool) -> None:
    """The orchestrator sends a request (extensions.reload) with the reply extensions.unloaded. NATS checks no
    permission on a reply subject, and the loader may publish events anyway: a responder that answers wherever it
    is asked puts its answer onto the event subject, where every listener hears it and the log stores it. That is
    why the service answers only into inboxes (`nats.reply_prefixes`): a responder that does so, as the service
    will (its own test is the service's), leaves the events and the log alone, and the next request gets its
    answer."""
    async with others_listening(administered.url) as others:
        responder = others.conns["genuine"]
        await responder.nc.subscribe(
            "extensions.reload", queue="extension-loader", cb=partial(_respond, only_inboxes=only_inboxes)
        )
        await flush_subscriptions(responder.nc)
        orchestrator = others.conns["orchestrator"]
        await orchestrator.nc.publish("extensions.reload", b"{}", reply="extensions.unloaded")
        answer = await orchestrator.nc.request("extensions.reload", b"{}", timeout=WAIT)  # after the one before
        assert answer.data == b'{"answered": true}'
        heard, stored = await others.settle()
    event_paths = [path for path, (_, subject, _) in PATHS.items() if subject == "extensions.unloaded"]
    if only_inboxes:
        assert stored == [] and all(msgs == [] for msgs in heard.values())
    else:
        assert [msg.data for msg in stored] == [b'{"answered": true}']
        for path, msgs in heard.items():
            assert [msg.data for msg in msgs] == ([b'{"answered": true}'] if path in event_paths else []), path


READ_A_BODY = ("STREAM.PURGE", "STREAM.UPDATE", "STREAM.MSG.DELETE")  # a single server steps down without one
LOG_COMMANDS = [
    f"$JS.API.{command}.{STREAM}"
    for command in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE", "STREAM.MSG.DELETE", "STREAM.LEADER.STEPDOWN")
] + [f"$JS.API.CONSUMER.DELETE.{STREAM}.replay"]


async def test_a_loader_s_acknowledgement_is_no_command_on_the_log(administered: NatsServer) -> None:
    """An event published with a reply subject has the log's acknowledgement sent there, inside EVENTS, by
    JetStream itself, where it reaches EVENTS's own JetStream API. A loader names every command on the log (and
    on the observer's durable consumer) as the reply of its events: an acknowledgement's body is no command's
    (the server refuses it, and logs why where it reads a body), so the log keeps its settings, contents and
    consumer. The last event's reply is an event subject: its acknowledgement is logged after the others were
    sent, which shows they all were."""
    async with others_listening(administered.url) as others:
        observer, admin = others.conns["observer"], others.conns["admin"]
        await events_js(observer).pull_subscribe("extensions.loaded", durable="replay", stream=STREAM)
        before = await streams(admin)
        loader = others.conns["genuine"]
        for command in LOG_COMMANDS:
            await loader.nc.publish("extensions.loaded", b"{}", reply=command)
        await loader.nc.publish("extensions.loaded", b"last", reply="extensions.unloaded")
        await loader.nc.flush()
        logged = await others.log.next(len(LOG_COMMANDS) + 2)
        assert [msg.data for msg in logged[:-1]] == [b"{}"] * len(LOG_COMMANDS) + [b"last"]
        assert logged[-1].subject == "extensions.unloaded"
        acknowledgement = msgspec.json.decode(logged[-1].data)
        assert acknowledgement["stream"] == STREAM  # JetStream's own, stored as it was sent
        for command in READ_A_BODY:
            await wait_for_log(administered, f"Invalid JetStream request 'EVENTS > $JS.API.{command}.{STREAM}'")
        after = await settled_streams(admin)
        assert after[STREAM].config == before[STREAM].config
        assert after[STREAM].first_seq == before[STREAM].first_seq
        assert after[STREAM].messages == before[STREAM].messages + len(LOG_COMMANDS) + 2
        assert (await events_js(observer).consumer_info(STREAM, "replay")).name == "replay"
        await others.settle()


# --- the service itself under these attacks ---------------------------------------------------------------------
# The real service, as `loader` under nats.conf once admin has made the streams, and an attacker with another
# user's credentials. What the service must do itself (NATS checks no reply subject): answer only into an inbox,
# and take for a peer's event only what a loader published. "Nothing" is shown by a marker sent afterwards down
# the same path (the service's own genuine events, a JetStream answer sent from LIVE) or by the service's own
# counters, never by a wait.

TASKSERV = ExtensionType.TASKSERV
# Who listens on each event subject beside the service: the orchestrator and another loader's connection (LIVE),
# the observer (OBS).
LISTENERS = ("orchestrator", "listener", "observer")
FORGED_KEY = "forged.cleared"  # the index record the publisher writes in the shape of an event
MARK = b"marker"  # a record of the index whose direct get, sent onto an event subject from LIVE, is a marker


@dataclass
class Victim:
    """The service, as `loader`, with etcd cached; the connections of the attackers and of those who listen on
    each event subject (`heard`, by listener and subject); admin reading the event log from before the service
    started."""

    service: ExtensionService
    conns: dict[str, Conn]
    heard: dict[tuple[str, str], Heard]
    log: LogReader
    etcd: list[Extension]  # what the service has cached of etcd

    async def stored(self) -> int:
        """How many messages EXTENSION_EVENTS holds, read as admin."""
        return (await events_js(self.conns["admin"]).stream_info(STREAM)).state.messages

    def in_live(self, listener: str) -> bool:
        return ACCOUNTS[self.conns[listener].user] == "LIVE"


def its_event(instance_id: str, subject: str, reason: str) -> Callable[[Msg], bool]:
    """Matches an event that the instance published itself on `subject`, for `reason`."""

    def match(msg: Msg) -> bool:
        if marked(msg, subject):
            return False
        try:
            body = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            return False
        return isinstance(body, dict) and body.get("instance_id") == instance_id and body.get("reason") == reason

    return match


def event_of(msg: Msg) -> tuple[str, str, str]:
    body = msgspec.json.decode(msg.data)
    return msg.subject, body["reason"], body["instance_id"]


@asynccontextmanager
async def victim_serving(url: str, tmp_path: Path) -> AsyncIterator[Victim]:
    async with AsyncExitStack() as stack:
        conns = {
            user: await stack.enter_async_context(connect(url, user))
            for user in ("orchestrator", "loader", "observer", "publisher", "admin")
        }
        conns["listener"] = await stack.enter_async_context(connect(url, "loader"))
        heard: dict[tuple[str, str], Heard] = {}
        for listener in LISTENERS:
            for subject in EVENT_SUBJECTS:
                heard[listener, subject] = Heard()
                await conns[listener].nc.subscribe(subject, cb=heard[listener, subject].add)
            await flush_subscriptions(conns[listener].nc)
        log = LogReader(conns["admin"])
        await log.start()
        service = await stack.enter_async_context(running_service(loader_config(url, tmp_path / "victim", **LAYOUT)))
        await LoaderClient(conns["orchestrator"].nc, timeout=WAIT).load("taskserv", "etcd")
        loaded = its_event(service.identity.id, "extensions.loaded", "load")
        assert [event_of(msg) for msg in await log.next(1)] == [("extensions.loaded", "load", service.identity.id)]
        for (_, subject), listened in heard.items():
            if subject == "extensions.loaded":
                assert await listened.until(loaded) == []
        etcd = service.manager.loaded(TASKSERV, "etcd")
        assert etcd
        yield Victim(service, conns, heard, log, etcd)
        assert all(not conn.violations for conn in conns.values()), {u: c.violations for u, c in conns.items()}


async def reload_as_marker(victim: Victim) -> dict[tuple[str, str], list[Msg]]:
    """The orchestrator has the service reload etcd: answered, one Nushell run, and the service publishes a genuine
    `unloaded` then `loaded`, after whatever it had sent before. They reach every listener (LIVE's and the
    observer) and the log stores them, first: returns what each listener heard before them."""
    service = victim.service
    runs = service.manager.runs
    reloaded = await LoaderClient(victim.conns["orchestrator"].nc, timeout=WAIT).reload("taskserv", "etcd")
    assert reloaded["metadata"]["name"] == "etcd" and service.manager.runs == runs + 1
    me = service.identity.id
    heard = {
        (listener, subject): await listened.until(its_event(me, subject, "reload"))
        for (listener, subject), listened in victim.heard.items()
    }
    assert [event_of(msg) for msg in await victim.log.next(2)] == [
        ("extensions.unloaded", "reload", me),
        ("extensions.loaded", "reload", me),
    ]
    return heard


async def plant_a_forged_clear(victim: Victim) -> str:
    """The publisher writes into the index a record shaped as a peer's `unloaded` event: another instance cleared
    the very version of etcd the service has cached. Returns its subject in the index's stream."""
    forged = msgspec.json.encode(
        {
            "event_id": "forged-clear",
            "reason": "cleared",
            "extension_type": "taskserv",
            "name": "etcd",
            "version": victim.etcd[0].metadata.version,
            "instance_id": "another-instance",
            "timestamp": "2026-01-01T00:00:00Z",
        }
    )
    assert isinstance(msgspec.json.decode(forged, type=ExtensionUnloaded), ExtensionUnloaded)
    index = await _index(victim.conns["publisher"])
    await index.put(FORGED_KEY, forged)
    await index.put(MARK_KEY, MARK)
    return f"$KV.{INDEX}.{FORGED_KEY}"


async def ignored_in_all(service: ExtensionService, count: int) -> None:
    """Waits, within WAIT, until the service has ignored `count` messages on the event subjects since it started;
    fails saying what it did instead."""
    try:
        with anyio.fail_after(WAIT):
            await service.wait_until(ignored_events=count)
    except TimeoutError:
        cached = [e.metadata.version for e in service.manager.loaded(TASKSERV, "etcd")]
        pytest.fail(f"ignored {service.ignored_events} of {count}; peer events {service.peer_events}; etcd {cached}")


async def answer_onto(
    conn: Conn, reply: str, api: str, stream: str, subject: str, *, seq: int = 0, consumer: str
) -> int:
    """Has JetStream answer one stored message (the last on `subject`, or the one at `seq`) onto `reply`, in every
    way `conn` may ask for it: a direct get naming the subject in the request's subject, a direct get and a
    message get naming it in the body, a pull consumer of its own whose next message is asked with that reply.
    Returns how many answers that makes."""
    body = json.dumps({"seq": seq} if seq else {"last_by_subj": subject}).encode()
    requests = [
        (f"{api}.DIRECT.GET.{stream}.{subject}", b""),
        (f"{api}.DIRECT.GET.{stream}", body),
        (f"{api}.STREAM.MSG.GET.{stream}", body),
    ]
    for request_subject, request_body in requests:
        await conn.nc.publish(request_subject, request_body, reply=reply)
    first: dict[str, Any] = (
        {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": seq}
        if seq
        else {"filter_subject": subject}
    )
    await conn.nc.jetstream(prefix=api, timeout=WAIT).add_consumer(stream, config=_reader(name=consumer, **first))
    await conn.nc.publish(f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}", b'{"batch": 1}', reply=reply)
    await conn.nc.flush()
    return len(requests) + 1


async def test_the_service_answers_no_request_onto_an_event_or_request_subject(
    administered: NatsServer, tmp_path: Path
) -> None:
    """With the orchestrator's credentials, loads whose reply subject is `extensions.unloaded`, `extensions.loaded`
    or `extensions.load`, of a cached extension (answered at once) and of one not cached (a Nushell run): the
    service refuses each (its load endpoint counts them as errors, in order before the next request), runs
    nothing and answers nothing. An answer onto `extensions.load` that the server let through would come back to
    its own queue group, where it is the only subscriber, before the second load after the attack: the count shows
    that none came. The next loads are answered; the reload after them (the marker) is the first thing every
    listener hears on the event subjects, in LIVE and in OBS, and the first thing the log stores."""
    async with victim_serving(administered.url, tmp_path) as victim:
        service, orchestrator = victim.service, victim.conns["orchestrator"]
        load = next(e for e in service.endpoints if e.subject == "extensions.load").stats
        requests, errors, runs, stored = load.num_requests, load.num_errors, service.manager.runs, await victim.stored()
        replies = ("extensions.unloaded", "extensions.loaded", "extensions.load")
        attacks = [(reply, name) for reply in replies for name in ("etcd", "redis")]  # redis: not cached
        for reply, name in attacks:
            body = msgspec.json.encode({"extension_type": "taskserv", "name": name})
            await orchestrator.nc.publish("extensions.load", body, reply=reply)
        client = LoaderClient(orchestrator.nc, timeout=WAIT)
        for _ in range(2):
            assert (await client.load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
        assert (load.num_requests, load.num_errors) == (requests + len(attacks) + 2, errors + len(attacks))
        assert "is not an inbox" in load.last_error
        assert service.manager.runs == runs and service.manager.loaded(TASKSERV, "redis") == []
        heard = await reload_as_marker(victim)
        assert all(msgs == [] for msgs in heard.values()), heard
        assert await victim.stored() == stored + 2  # the reload's two events, nothing else


async def test_the_service_ignores_a_forged_event_that_jetstream_answers_onto_its_event_subject(
    administered: NatsServer, tmp_path: Path
) -> None:
    """The publisher writes a record shaped as a peer's `unloaded` (cleared) of the etcd the service has cached;
    the orchestrator's and a loader's credentials have JetStream answer it onto `extensions.unloaded` in every way
    they may read the index (`$JS.reg.API`: direct gets, a message get, a pull consumer's next message). Every
    answer reaches LIVE's listeners and the service, each marked as JetStream's: the service ignores them all
    (`ignored_events` grows by as many), keeps etcd cached and acts on no peer event; none reaches the observer,
    none is stored. The service's own reload afterwards reaches every listener and is stored."""
    async with victim_serving(administered.url, tmp_path) as victim:
        service = victim.service
        subject = await plant_a_forged_clear(victim)
        ignored, peers, stored = service.ignored_events, service.peer_events, await victim.stored()
        sent = 0
        for user in ("orchestrator", "loader"):
            conn = victim.conns[user]
            sent += await answer_onto(conn, "extensions.unloaded", REG_API, INDEX_STREAM, subject, consumer=user)
        await ignored_in_all(service, ignored + sent)
        assert service.manager.loaded(TASKSERV, "etcd") == victim.etcd
        assert service.peer_events == peers
        heard = await reload_as_marker(victim)
        for (listener, on), msgs in heard.items():
            if on == "extensions.unloaded" and victim.in_live(listener):
                assert len(msgs) == sent, (listener, msgs)
                assert all(not_an_event(msg, on) for msg in msgs), [(m.subject, m.reply, m.headers) for m in msgs]
            else:
                assert msgs == [], (listener, on, msgs)
        assert (service.ignored_events, service.peer_events) == (ignored + sent, peers)
        assert await victim.stored() == stored + 2  # the reload's two events, nothing else


async def test_the_observer_s_replays_onto_an_event_subject_stay_in_its_account(
    administered: NatsServer, tmp_path: Path
) -> None:
    """Another loader reloads etcd before the service starts: the log stores its genuine `unloaded`, which would
    make the service drop etcd. The observer has JetStream answer that stored event (`$JS.events.API`) and the
    publisher's forged record (`$JS.reg.API`) onto `extensions.unloaded`, every way it may read each: all of it
    arrives in OBS, to the observer alone. Then, from LIVE, the orchestrator has a marker record answered onto
    the same subject: it is the first thing LIVE's listeners hear and the only thing the service ignores; the
    service acts on no peer event and keeps etcd; the log stores nothing but the service's reload afterwards."""
    url = administered.url
    async with connect(url, "orchestrator") as orchestrator, connect(url, "admin") as admin:
        log = LogReader(admin)
        await log.start()
        async with running_service(loader_config(url, tmp_path / "peer", **LAYOUT)) as peer:
            client = LoaderClient(orchestrator.nc, timeout=WAIT)
            await client.load("taskserv", "etcd")
            await client.reload("taskserv", "etcd")
            logged = await log.next(3)
        other = peer.identity.id
        assert [event_of(msg) for msg in logged] == [
            ("extensions.loaded", "load", other),
            ("extensions.unloaded", "reload", other),
            ("extensions.loaded", "reload", other),
        ]
        seq = logged[1].metadata.sequence.stream
        assert (await events_js(admin).get_last_msg(STREAM, "extensions.unloaded")).seq == seq
    async with victim_serving(url, tmp_path) as victim:
        service, observer = victim.service, victim.conns["observer"]
        subject = await plant_a_forged_clear(victim)
        ignored, peers, stored = service.ignored_events, service.peer_events, await victim.stored()
        reply = "extensions.unloaded"
        sent = await answer_onto(observer, reply, REG_API, INDEX_STREAM, subject, consumer="observer")
        sent += await answer_onto(observer, reply, EVENTS_API, STREAM, reply, seq=seq, consumer="observer")
        await victim.heard["observer", reply].wait_for(sent)  # every answer has arrived, in OBS
        mark = f"{REG_API}.DIRECT.GET.{INDEX_STREAM}.$KV.{INDEX}.{MARK_KEY}"
        await victim.conns["orchestrator"].nc.publish(mark, b"", reply=reply)
        await ignored_in_all(service, ignored + 1)
        for listener in LISTENERS:
            if victim.in_live(listener):
                assert await victim.heard[listener, reply].before(MARK) == [], listener
        assert (service.ignored_events, service.peer_events) == (ignored + 1, peers)  # the marker alone
        assert service.manager.loaded(TASKSERV, "etcd") == victim.etcd
        heard = await reload_as_marker(victim)
        for (listener, on), msgs in heard.items():
            if (listener, on) == ("observer", reply):
                assert len(msgs) == sent, msgs  # its own answers, and neither LIVE's marker nor anything else
            else:
                assert msgs == [], (listener, on, msgs)
        assert await victim.stored() == stored + 2  # the reload's two events, nothing else


# --- requests, replies and `$SRV` across the accounts --------------------------------------------------------------


async def test_an_orchestrator_s_request_and_its_reply_reach_no_one_else(
    administered: NatsServer, tmp_path: Path
) -> None:
    """The service as the loader; the orchestrator asks it; every other place listens: the reply reaches the
    orchestrator's own inbox and nothing reaches anyone else."""
    config = loader_config(administered.url, tmp_path)
    async with running_service(config) as service, others_listening(administered.url, serving=True) as others:
        stats = await LoaderClient(others.conns["orchestrator"].nc, timeout=WAIT).stats()
        assert stats["instance_id"] == service.identity.id
        heard, stored = await others.settle()
    assert stored == [] and all(msgs == [] for msgs in heard.values())


async def test_the_observer_pings_every_loader_through_its_import(administered: NatsServer) -> None:
    """The observer's `$SRV.PING` crosses into LIVE through LIVE's export: both loaders answer (a stream of
    answers), each seeing the reply as a `_R_.` subject its import mapped, which allow_responses lets it answer."""
    async with AsyncExitStack() as stack:
        loaders = [await stack.enter_async_context(connect(administered.url, "loader")) for _ in range(2)]
        seen: list[str] = []

        async def pong(msg: Msg, name: str) -> None:
            seen.append(msg.reply)
            await msg.respond(name.encode())

        for i, loader in enumerate(loaders):
            await loader.nc.subscribe(f"$SRV.PING.{SERVICE_NAME}", cb=partial(pong, name=f"loader-{i}"))
            await flush_subscriptions(loader.nc)
        observer = await stack.enter_async_context(connect(administered.url, "observer"))
        answers = Heard()
        reply = f"{inbox('observer')}.ping"
        await observer.nc.subscribe(reply, cb=answers.add)
        await flush_subscriptions(observer.nc)
        await observer.nc.publish(f"$SRV.PING.{SERVICE_NAME}", b"", reply=reply)
        await answers.wait_for(2)
        assert sorted(msg.data for msg in answers.msgs) == [b"loader-0", b"loader-1"]
        assert len(seen) == 2 and all(r.startswith("_R_.") for r in seen), seen
        assert all(not conn.violations for conn in [*loaders, observer])


# --- logging in -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["orchestrator", "loader", "observer", "publisher", "admin"])
async def test_a_wrong_password_is_refused(secured: NatsServer, user: str) -> None:
    someone_elses = next(p for u, p in PASSWORDS.items() if u != user)
    for password in ("wrong", someone_elses):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            async with connect(secured.url, user, password):
                pass
    await wait_for_log(secured, f'authentication error - User "{user}"', count=2)


async def test_an_unknown_user_is_refused(secured: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        async with connect(secured.url, "root", "anything", inbox_prefix="_INBOX.root"):
            pass


async def test_without_credentials_a_client_is_the_orchestrator(secured: NatsServer, tmp_path: Path) -> None:
    """no_auth_user: a person on the machine loads an extension without a password, and cannot forge events."""
    async with running_service(loader_config(secured.url, tmp_path)), connect(secured.url, ANONYMOUS) as anonymous:
        loaded = await LoaderClient(anonymous.nc, timeout=WAIT).load("taskserv", "etcd")
        assert loaded["metadata"]["name"] == "etcd"
        await anonymous.nc.publish("extensions.unloaded", b"{}")
        await flush_subscriptions(anonymous.nc)  # two round trips: the PUB has reached the server before a PING
        assert anonymous.violations == ['nats: permissions violation for publish to "extensions.unloaded"']
    await wait_for_log(secured, f'{logged_as(ANONYMOUS)} - Publish Violation - Subject "extensions.unloaded"')


# --- the service under these permissions ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [False, True], ids=["core", "log"])
async def test_the_service_works_as_the_loader_user(
    administered: NatsServer, tmp_path: Path, layout: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Serves every kind of request and publishes its events; with the account layout's keys (`log`) it checks
    that the log is there and the log stores every event it published; nothing refused."""
    secured = administered
    config = loader_config(secured.url, tmp_path, **(LAYOUT if layout else {}))
    events = EventLog()
    async with connect(secured.url, "observer") as observer, connect(secured.url, "orchestrator") as orchestrator:
        for subject in EVENT_SUBJECTS:
            await observer.nc.subscribe(subject, cb=events.add)
        await flush_subscriptions(observer.nc)
        async with connect(secured.url, "admin") as admin:
            log = LogReader(admin)
            await log.start()
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
            heard = await events.wait_for(published)
            # The log (admin made it) captured them all, as the observer heard them, in order.
            stored = await log.next(published)
            assert [msgspec.json.decode(m.data) for m in stored] == heard
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
    await wait_for_log(secured, f'{logged_as("orchestrator")} - Subscription Violation - Subject "_INBOX.loader.')


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
    await wait_for_log(secured, f'{logged_as("loader")} - Subscription Violation - Subject "_INBOX.orchestrator.')


async def test_the_container_health_check_passes_as_the_loader_user(secured: NatsServer, tmp_path: Path) -> None:
    """deploy/healthcheck.py with the compose environment (user loader, its password) against nats.conf."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= {
        f"{ENV_PREFIX}NATS__URL": secured.url,
        f"{ENV_PREFIX}NATS__USER": "loader",
        f"{ENV_PREFIX}NATS__PASSWORD": PASSWORDS["loader"],
        f"{ENV_PREFIX}NATS__TLS_CA": "",  # this server is plain; compose's speaks TLS (tests/deploy/test_tls.py)
    }
    argv = [sys.executable, str(ROOT / "deploy" / "healthcheck.py"), str(ROOT / "deploy" / "loader.toml")]
    async with running_service(loader_config(secured.url, tmp_path)) as service:
        with anyio.fail_after(30):
            done = await anyio.run_process(argv, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert service.identity.id in done.stdout.decode()


# --- `extension-loader dev` (make run) with nothing set ------------------------------------------------------------


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
    async with dev_running(argv, env=env, cwd=tmp_path) as run:
        assert b"as NATS user loader" in run.stdout
        async with connect(url, ANONYMOUS) as anonymous:  # a person on the machine, typing no password
            client = LoaderClient(anonymous.nc, timeout=WAIT)
            event = await _receive_one(anonymous, "extensions.loaded", partial(client.load, "taskserv", "etcd"))
            assert msgspec.json.decode(event.data)["extension"]["metadata"]["name"] == "etcd"
        # The variables are unset here: the passwords on this server are the development ones.
        for user, variable in VARIABLES.items():
            async with connect(url, user, DEV_PASSWORDS[variable]):
                pass
        assert b"nats --inbox-prefix _INBOX.orchestrator request extensions.load" in run.stdout
    assert run.code == 0, run.stderr.decode()
    lines = run.stderr.decode().splitlines()
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
    with pytest.raises(EventStreamError, match=r"may this user use \$JS\.API\.STREAM\.INFO\.EXTENSION_EVENTS"):
        async with running_service(config):
            pass


def registry_cli(*args: str, user: str | None = None) -> list[str]:
    """`extension-loader <args>` as `user` (None: no credentials) through the account layout's registry prefix."""
    credentials = [] if user is None else ["--user", user, "--password", PASSWORDS[user]]
    prefix = ["--set", f'registry.api_prefix="{REG_API}"', "--set", f'nushell.path="{NU}"']
    return [str(Path(sys.executable).with_name("extension-loader")), *args, *credentials, *prefix]


async def test_a_registry_command_without_the_account_s_prefix_says_which_prefix_to_use(
    administered: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    """`publish` and `search` as the README's first example gives them, without `registry.api_prefix`: the server
    refuses `$JS.API`, and the command says which prefix nats.conf's accounts give the registry (exit 4)."""
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    key = str(tmp_path / "publisher.nk")  # the signer's seed
    server = ("--server", administered.url)
    bare = str(Path(sys.executable).with_name("extension-loader"))
    for argv in (
        [bare, "publish", str(folder), "--key", key, *server, "--user", "publisher"],
        [bare, "search", "vault", *server, "--user", "loader"],
    ):
        user = argv[argv.index("--user") + 1]
        code, _, said = await run_cli([*argv, "--password", PASSWORDS[user], "--set", f'nushell.path="{NU}"'])
        assert code == 4, said
        assert "--set registry.api_prefix='$JS.reg.API'" in said and "Traceback" not in said, said


async def run_cli(argv: list[str], limit: float = WAIT) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_CA")}
    with anyio.fail_after(limit):
        done = await anyio.run_process(argv, env=env, cwd=ROOT, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_registry_works_as_publisher_and_loader_with_nothing_refused(
    administered: NatsServer, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """The publisher publishes and yanks (`extension-loader publish`, `yank`) into the buckets admin made; a loader
    with auto_update follows the index, fetches the archive with its own consumer (and deletes that consumer),
    loads it, and announces the yank: every step within nats.conf, through the imported registry, no permission
    refused, no NATS error logged."""
    secured = administered
    config = loader_config(secured.url, tmp_path, **registry_settings(signer.public_key, auto_update=True), **LAYOUT)
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    events = EventLog()
    server = ("--server", secured.url)
    async with connect(secured.url, "observer") as observer:
        for subject in EVENT_SUBJECTS:
            await observer.nc.subscribe(subject, cb=events.add)
        await flush_subscriptions(observer.nc)
        async with running_service(config), connect(secured.url, "orchestrator") as orchestrator:
            key = str(tmp_path / "publisher.nk")
            code, _, said = await run_cli(registry_cli("publish", str(folder), "--key", key, *server, user="publisher"))
            assert code == 0, said
            (loaded,) = await events.wait_for(1, ".loaded")
            assert loaded["reason"] == "published"
            client = LoaderClient(orchestrator.nc, timeout=WAIT)
            assert (await client.load("taskserv", "vault", "1.0.0"))["metadata"]["version"] == "1.0.0"
            code, _, said = await run_cli(
                registry_cli("yank", "taskserv", "vault", "1.0.0", "--key", key, *server, user="publisher")
            )
            assert code == 0, said
            (unloaded,) = await events.wait_for(1, ".unloaded")
            assert unloaded["reason"] == "yanked"
            assert (await client.stats())["registry"]["fetched"] == 1
        assert observer.violations == orchestrator.violations == []
    await log_barrier(secured)
    refused = [line for line in secured.log if "Violation" in line and 'Subject "log.barrier"' not in line]
    assert refused == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "NATS error" in r.getMessage()]


async def test_a_person_searches_the_registry_but_only_the_publisher_publishes_or_yanks(
    administered: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    """From the command line: `search` works for anyone who may read the index; `publish`, `yank` and `refresh` by
    anyone but `publisher` end at once with the refusal (not after the time-out) and exit 4."""
    secured = administered
    folder = write_extension(tmp_path / "checkout", "taskserv", "vault", "1.0.0")
    server = ("--server", secured.url)
    key = str(tmp_path / "publisher.nk")
    code, _, said = await run_cli(registry_cli("publish", str(folder), "--key", key, *server, user="publisher"))
    assert code == 0, said
    code, out, said = await run_cli(registry_cli("search", "vault", *server))
    assert code == 0 and "vault" in out, said
    code, out, said = await run_cli(registry_cli("refresh", "--key", key, *server, user="publisher"))
    assert code == 0 and "timestamp of 1 extension," in out, said
    refused = (["yank", "taskserv", "vault", "1.0.0", "--key", key], ["publish", str(folder), "--key", key])
    for command in (*refused, ["refresh", "--key", key]):
        # well inside the registry's own 30 s time-out
        code, _, said = await run_cli(registry_cli(*command, *server), limit=WAIT / 2)
        assert code == 4, said
        assert "permissions violation" in said and "may not make this request" in said
