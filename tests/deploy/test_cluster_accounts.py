"""The registry and the fleet on deploy/cluster's three nodes, in nats.conf's accounts, over TLS.

The three files run as documented (`cluster_from_the_deploy_files`: nats.conf included as they include it, TLS
for clients and routes with the certificates `extension-loader certs` makes, only the ports moved to free ones),
and every user logs in over TLS as itself:

- `extension-loader setup --replicas 3` as `admin`, as docker-compose runs it, makes the event log
  EXTENSION_EVENTS in EVENTS and the registry's buckets in REG, each on all three nodes;
- `publisher` (PUB) publishes signed releases through node 1, reading the buckets under `$JS.reg.API`;
- a loader with deploy/loader.toml's settings (`loader`, LIVE) connected to node 2, trusting the publisher's key,
  with auto_update, loads a release the orchestrator (LIVE, node 3) asks for, then loads and announces a newly
  published one; the log stores the announcement (admin reads it) and `observer` (OBS, node 1) replays it with a
  pull consumer through `$JS.events.API`; the orchestrator's fleet request and the observer's `$SRV.PING` reach
  the loader;
- with the loader's node stopped (it led all three streams), the loader reconnects to another node and all of
  that goes on, asked and heard from the third.

Nobody is refused anything on the way: every test connection's error callback, the loader's log and the nodes'
logs show no permissions violation. Nothing waits by the clock: the cluster is settled, and a node has heard of
a subscription made on another, when their monitoring says so (a subscription reaches the other nodes a moment
after its own node has it, and a request sent through another node meanwhile finds no responders: a loader just
started or reconnected, a pull consumer just made); every other wait is bounded and on an event (a message, a
fetch, a reconnection).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from service.app import certs
from service.app.client import LoaderClient
from service.app.natsserver import NatsServer, wait_settled
from service.app.publishing import prepare, publish
from service.contract.config import ENV_PREFIX, Config, inbox_prefix_for
from service.registry.buckets import RegistryBuckets
from service.registry.index import Release
from service.registry.names import DEFAULT_NAMES, BucketNames
from service.registry.signing import Signer
from service.wire.micro import SERVICE_NAME
from service.wire.service import ExtensionService, flush_subscriptions
from tests.app.test_registry_cluster import published, source, wait_published
from tests.conftest import WAIT, EventLog, make_config, registry_settings, running_service
from tests.deploy.test_tls import PASSWORDS, cluster_from_the_deploy_files, trusting, wait_until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
LOADER_TOML = ROOT / "deploy" / "loader.toml"
LOG = "EXTENSION_EVENTS"
INDEX, ARCHIVES = DEFAULT_NAMES.index_stream, DEFAULT_NAMES.archive_stream
STREAMS = (LOG, INDEX, ARCHIVES)
# The JetStream APIs as the accounts see them: REG's own (admin), REG's exports, EVENTS's exports.
JS_API, REG_API, EVENTS_API = "$JS.API", "$JS.reg.API", "$JS.events.API"
API = ((LOG, EVENTS_API), (INDEX, JS_API), (ARCHIVES, JS_API))  # each stream and where admin reaches its API
VARIABLES = {
    "orchestrator": "NATS_ORCHESTRATOR_PASSWORD",
    "loader": "NATS_LOADER_PASSWORD",
    "observer": "NATS_OBSERVER_PASSWORD",
    "publisher": "NATS_PUBLISHER_PASSWORD",
    "admin": "NATS_ADMIN_PASSWORD",
}
# What the tests ask of the loader, as its subscriptions: (subject, queue group); and the events.
ASKED = {
    ("extensions.load", "extension-loader"),
    ("extensions.stats", "extension-loader"),
    ("extensions.all.stats", ""),
    (f"$SRV.PING.{SERVICE_NAME}", ""),
}
EVENTS = {("extensions.loaded", ""), ("extensions.unloaded", "")}
# The nodes (indices into the cluster's): the publisher, admin and at first the observer log in on node 1, the
# loader on node 2, the orchestrator on node 3.
N1, N2, N3 = 0, 1, 2


def shipped_loader_settings() -> dict[str, Any]:
    """deploy/loader.toml's user and its [events] and [registry] keys: how a loader runs in LIVE."""
    with LOADER_TOML.open("rb") as fh:
        shipped = tomllib.load(fh)
    settings = {
        "nats.user": shipped["nats"]["user"],
        **{f"events.{key}": value for key, value in shipped["events"].items()},
        **{f"registry.{key}": value for key, value in shipped["registry"].items()},
    }
    assert settings == {
        "nats.user": "loader",
        "events.jetstream": False,
        "events.require_stream": True,
        "events.api_prefix": EVENTS_API,
        "registry.api_prefix": REG_API,
    }
    return settings


# --- the cluster and who logs in -----------------------------------------------------------------------------


@dataclass
class Cluster:
    folder: Path  # the project folder the nodes run from
    nodes: list[NatsServer]
    names: list[str]  # each node's server name

    @property
    def ca(self) -> Path:
        return self.folder / "data" / "certs" / certs.CA_CERT

    def url(self, node: int) -> str:
        return f"tls://127.0.0.1:{self.nodes[node].port}"

    def node(self, port: int | None) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.port == port)

    async def settled(self, streams: tuple[str, ...] = STREAMS) -> None:
        """Returns once the running nodes have a metadata leader current with the others, and each stream a
        leader with its other running replicas current."""
        nodes = dict(zip(self.names, self.nodes, strict=True))
        await anyio.to_thread.run_sync(partial(wait_settled, nodes, streams, WAIT))

    async def stop(self, node: int) -> None:
        await anyio.to_thread.run_sync(self.nodes[node].stop)
        await self.settled()

    async def heard(self, node: int, source: int, subscriptions: set[tuple[str, str]]) -> None:
        """Returns once `node` has heard over its routes from `source` of interest in these (subject, queue
        group): a client's subscription reaches the other nodes a moment after its own has it, and until then
        a request there finds no responders and a message is not sent on."""

        def known() -> set[tuple[str, str]]:
            routes = self.nodes[node].monitor("routez?subs=detail")["routes"]
            return {
                (sub["subject"], sub.get("qgroup", ""))
                for route in routes
                if route.get("remote_name") == self.names[source]
                for sub in route.get("subscriptions_list_detail", [])
            }

        what = f"{self.names[node]} hears of {sorted(subscriptions)} from {self.names[source]}"
        await anyio.to_thread.run_sync(wait_until, what, lambda: subscriptions <= known())

    def violations(self) -> list[str]:
        """The permissions violations each node logged (each keeps its last lines only: none must be lost)."""
        assert all(len(node.log) < (node.log.maxlen or 0) for node in self.nodes), "a node's log lost lines"
        return [line for node in self.nodes for line in node.log if "Violation" in line]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_from_the_deploy_files(tmp_path / "project") as nodes:
        formed = Cluster(tmp_path / "project", nodes, [node.monitor("varz")["server_name"] for node in nodes])
        wait_settled(dict(zip(formed.names, nodes, strict=True)), timeout=WAIT)
        yield formed


@dataclass
class Login:
    user: str
    node: int  # the one it is connected to
    nc: Client
    refusals: list[str] = field(default_factory=list)  # permissions violations the server sent this connection


@asynccontextmanager
async def login(cluster: Cluster, node: int, user: str) -> AsyncIterator[Login]:
    """`user` on one node only, over TLS trusting the cluster's CA, with the inbox prefix nats.conf gives it."""
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:
        if "violation" in str(exc).lower():
            refusals.append(str(exc))

    nc = await nats.connect(
        cluster.url(node),
        user=user,
        password=PASSWORDS[VARIABLES[user]],
        inbox_prefix=inbox_prefix_for(user),
        tls=trusting(cluster.ca.parent),
        name=f"test-{user}",
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=5,
        error_cb=on_error,
    )
    try:
        yield Login(user, node, nc, refusals)
    finally:
        await nc.close()


# --- setup, publish, read the log ----------------------------------------------------------------------------


async def set_up_r3(cluster: Cluster) -> list[str]:
    """`extension-loader setup --replicas 3` through node 1, as docker-compose's one-shot service runs it (admin,
    its password in $NATS_PASSWORD, the log through admin's import): the lines it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "NATS_"))}
    env |= {"NATS_PASSWORD": PASSWORDS[VARIABLES["admin"]], f"{ENV_PREFIX}EVENTS__API_PREFIX": EVENTS_API}
    argv = [str(Path(sys.executable).with_name("extension-loader")), "setup", "--server", cluster.url(N1)]
    argv += ["--tls-ca", str(cluster.ca), "--user", "admin", "--replicas", "3"]
    with anyio.fail_after(3 * WAIT):
        done = await anyio.run_process(argv, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().splitlines()


async def publish_release(publisher: Login, folder: Path, signer: Signer, config: Config) -> Release:
    """`extension-loader publish` as `publisher`: the buckets `admin` made, read and written through PUB's
    imports (`registry.api_prefix`)."""
    registry = config.registry
    names = BucketNames(index=registry.index_bucket, archives=registry.archive_bucket)
    buckets = RegistryBuckets(publisher.nc, names, timeout_s=registry.timeout_s, api_prefix=registry.api_prefix)
    await buckets.open()
    assert await buckets.problems() == []
    return (await publish(buckets, await prepare(folder, signer, config))).release


async def read_log_until(cluster: Cluster, reader: Login, data: bytes, **consumer: Any) -> list[Msg]:
    """What EXTENSION_EVENTS holds, from its first message up to the one whose body is `data` (waiting until it
    is stored), read by `reader` through `$JS.events.API` with a pull consumer of its own.

    The consumer lives on one node, which answers its `MSG.NEXT` requests. Made on another node than the
    reader's, it may be asked before the reader's node has heard of it, and then nobody answers (status 503;
    it happens in a plain cluster too, and the service's own pull consumers ask again on it): so the first fetch
    waits until the reader's node has heard."""
    js = reader.nc.jetstream(prefix=EVENTS_API, timeout=WAIT)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=2 * WAIT, **consumer)
    sub = await js.pull_subscribe("extensions.>", stream=LOG, config=config)
    stored: list[Msg] = []
    try:
        info = await sub.consumer_info()
        assert info.cluster is not None and info.cluster.leader is not None
        held = cluster.names.index(info.cluster.leader)
        if held != reader.node:
            await cluster.heard(reader.node, held, {(f"{JS_API}.CONSUMER.MSG.NEXT.{LOG}.{info.name}", "")})
        with anyio.fail_after(WAIT):
            while not stored or stored[-1].data != data:
                (msg,) = await sub.fetch(1, timeout=WAIT)
                if config.ack_policy is AckPolicy.EXPLICIT:
                    await msg.ack_sync()
                stored.append(msg)
    finally:
        await sub.unsubscribe()
    return stored


async def stored_and_replayed(cluster: Cluster, admin: Login, observer: Login, event: Msg) -> None:
    """The log stored `event` as the orchestrator heard it (admin reads it through its import of EVENTS's API)
    and the observer replays it with a pull consumer through OBS's imports, acknowledging what it reads."""
    stored = await read_log_until(cluster, admin, event.data, ack_policy=AckPolicy.NONE, mem_storage=True)
    assert (stored[-1].subject, stored[-1].data) == (event.subject, event.data)
    replayed = await read_log_until(cluster, observer, event.data, ack_policy=AckPolicy.EXPLICIT)
    assert [(m.subject, m.data) for m in replayed] == [(m.subject, m.data) for m in stored]


# --- what the loader answers ---------------------------------------------------------------------------------


async def fleet_and_ping(service: ExtensionService, orchestrator: Login, observer: Login) -> None:
    """The orchestrator's `extensions.all.stats` gets the loader's answer (the registry reachable), and the
    observer's `$SRV.PING`, crossing into LIVE through its import, gets the loader's."""
    gathered = await LoaderClient(orchestrator.nc, timeout=WAIT).gather("stats", replies=1)
    assert gathered.errors == []
    (answer,) = gathered.answers
    assert answer["instance_id"] == service.identity.id
    assert answer["data"]["registry"]["reachable"] is True

    answers = await observer.nc.subscribe(observer.nc.new_inbox())
    await flush_subscriptions(observer.nc)
    await observer.nc.publish(f"$SRV.PING.{SERVICE_NAME}", b"", reply=answers.subject)
    pong = await answers.next_msg(timeout=WAIT)
    await answers.unsubscribe()
    assert "Status" not in (pong.headers or {}), pong.headers  # 503: nobody in LIVE heard it
    ping = msgspec.json.decode(pong.data)
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert (ping["name"], ping["id"]) == (SERVICE_NAME, service.identity.id)


def loader_config(cluster: Cluster, tmp_path: Path, signer: Signer) -> Config:
    """deploy/loader.toml's settings, the loader's password, the cluster's CA; only node 2 named (it learns the
    other two from the cluster); no extension tree: the registry is all it has."""
    empty = tmp_path / "loader" / "no-tree"
    empty.mkdir(parents=True)
    return make_config(
        cluster.url(N2),
        tmp_path / "loader",
        roots=[empty],
        overrides={
            **shipped_loader_settings(),
            "nats.password": PASSWORDS[VARIABLES["loader"]],
            "nats.tls_ca": str(cluster.ca),
            **registry_settings(signer.public_key, auto_update=True),
        },
    )


def publisher_config(cluster: Cluster, tmp_path: Path) -> Config:
    return make_config(cluster.url(N1), tmp_path / "publisher", overrides={"registry.api_prefix": REG_API})


async def lead(admin: Login, cluster: Cluster, node: int) -> None:
    """As admin, moves the leadership of the three streams to `node` (a step-down naming it, each stream through
    the API of its own account), then waits until they are settled there."""
    name = cluster.names[node]
    for stream, prefix in API:
        js = admin.nc.jetstream(prefix=prefix, timeout=WAIT)
        info = await js.stream_info(stream)
        assert info.cluster is not None
        if info.cluster.leader != name:
            body = msgspec.json.encode({"placement": {"preferred": name}})
            reply = await admin.nc.request(f"{prefix}.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=WAIT)
            assert msgspec.json.decode(reply.data).get("success") is True, reply.data
    await cluster.settled()
    for stream, prefix in API:
        info = await admin.nc.jetstream(prefix=prefix, timeout=WAIT).stream_info(stream)
        assert info.cluster is not None and info.cluster.leader == name, (stream, info.cluster)


async def listen(listener: Login) -> EventLog:
    """The live events as `listener` hears them: in LIVE (orchestrator), or through OBS's imports (observer)."""
    events = EventLog()
    for subject in ("extensions.loaded", "extensions.unloaded"):
        await listener.nc.subscribe(subject, cb=events.add)
    await flush_subscriptions(listener.nc)
    return events


def announcement(events: EventLog) -> Msg:
    """The one `extensions.loaded` with reason `published` that was heard."""
    (announced,) = [m for m in events.messages if msgspec.json.decode(m.data)["reason"] == "published"]
    return announced


def loader_refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "violation" in r.getMessage().lower()]


# --- the tests -------------------------------------------------------------------------------------------------


async def test_setup_makes_the_log_in_events_and_the_buckets_in_reg_on_all_three_nodes(cluster: Cluster) -> None:
    assert await set_up_r3(cluster) == [
        f"events stream {LOG}: created (subjects extensions.loaded, extensions.unloaded; 3 replicas)",
        f"index bucket {DEFAULT_NAMES.index}: created (subjects $KV.{DEFAULT_NAMES.index}.>; 3 replicas)",
        f"archive bucket {DEFAULT_NAMES.archives}: created (subjects $O.{DEFAULT_NAMES.archives}.C.>, "
        f"$O.{DEFAULT_NAMES.archives}.M.>; 3 replicas)",
    ]
    await cluster.settled()
    async with login(cluster, N1, "admin") as admin:
        for stream, prefix in API:
            info = await admin.nc.jetstream(prefix=prefix, timeout=WAIT).stream_info(stream)
            assert info.config.num_replicas == 3 and info.cluster is not None
            assert {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])} == set(cluster.names)
    # Each node holds each stream in its account: the log in EVENTS, the buckets in REG, nothing anywhere else.
    for node in cluster.nodes:
        report = node.monitor("jsz?accounts=true&streams=true")
        held = {a["name"]: sorted(s["name"] for s in a.get("stream_detail", [])) for a in report["account_details"]}
        assert held == {"EVENTS": [LOG], "REG": sorted((INDEX, ARCHIVES))}, held
    # Run again (every `docker compose up` does): nothing to change.
    assert [line.partition(": ")[2] for line in await set_up_r3(cluster)] == ["unchanged"] * 3
    assert admin.refusals == [] and cluster.violations() == []


async def test_a_release_published_on_node_1_is_loaded_and_announced_by_a_loader_on_node_2(
    cluster: Cluster, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Node 3 leads the three streams, so that each step crosses from one node to another: the publisher's writes
    (node 1 to 3), the loader's reads of the registry and its captured events (2 to 3), the orchestrator's
    requests (3 to 2), the observer's live events and ping (2 to 1, 1 to 2)."""
    await set_up_r3(cluster)
    publishing = publisher_config(cluster, tmp_path)
    config = loader_config(cluster, tmp_path, signer)
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(cluster, N1, "publisher"))
        observer = await stack.enter_async_context(login(cluster, N1, "observer"))
        admin = await stack.enter_async_context(login(cluster, N1, "admin"))
        orchestrator = await stack.enter_async_context(login(cluster, N3, "orchestrator"))
        await lead(admin, cluster, N3)
        first = await publish_release(publisher, source(tmp_path, "etcd", "3.5.0"), signer, publishing)

        service = await stack.enter_async_context(running_service(config))
        assert service.nc.connected_url is not None and cluster.node(service.nc.connected_url.port) == N2
        events, live = await listen(orchestrator), await listen(observer)
        await cluster.heard(N3, N2, ASKED)
        await cluster.heard(N1, N2, ASKED)
        await cluster.heard(N2, N1, EVENTS)
        await cluster.heard(N2, N3, EVENTS)

        # Asked from node 3, loaded on node 2 from what node 1 published.
        loaded = await LoaderClient(orchestrator.nc, timeout=WAIT).load("taskserv", "etcd")
        assert (loaded["metadata"]["version"], loaded["digest"]) == ("3.5.0", first.tree_digest)
        (load,) = await events.wait_for(1, ".loaded")
        assert load["reason"] == "load"

        # A newer version published: the loader loads it ahead of any request and announces it.
        await publish_release(publisher, source(tmp_path / "later", "etcd", "3.6.0"), signer, publishing)
        assert await wait_published(events, 1) == [(service.manager.instance_id, "3.6.0")]
        assert await wait_published(live, 1) == published(events)  # the observer hears it live too
        await stored_and_replayed(cluster, admin, observer, announcement(events))

        await fleet_and_ping(service, orchestrator, observer)
        assert publisher.refusals == observer.refusals == admin.refusals == orchestrator.refusals == []
    assert loader_refusals(caplog) == [] and cluster.violations() == []


async def test_with_the_loader_s_node_stopped_it_reconnects_and_loading_and_announcing_go_on(
    cluster: Cluster, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """The loader's node leads the log and both buckets when it stops: each stream elects a leader among the
    two left, and the loader reconnects to one of them (named to it by the cluster, not by its configuration)
    and reads the index again there. Then, with the streams led by the other node left and the orchestrator and
    observer there too, it serves, loads, announces and answers the ping as before, and the log stores what it
    announces."""
    await set_up_r3(cluster)
    publishing = publisher_config(cluster, tmp_path)
    config = loader_config(cluster, tmp_path, signer)
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(cluster, N1, "publisher"))
        admin = await stack.enter_async_context(login(cluster, N1, "admin"))
        orchestrator = await stack.enter_async_context(login(cluster, N3, "orchestrator"))
        for version in ("3.5.0", "3.6.0"):
            await publish_release(publisher, source(tmp_path, "etcd", version), signer, publishing)

        service = await stack.enter_async_context(running_service(config))
        assert service.follower is not None and service.nc.connected_url is not None
        assert cluster.node(service.nc.connected_url.port) == N2
        await cluster.heard(N3, N2, ASKED)
        loaded = await LoaderClient(orchestrator.nc, timeout=WAIT).load("taskserv", "etcd", "3.5.0")
        assert loaded["metadata"]["version"] == "3.5.0"
        await lead(admin, cluster, N2)
        seen = service.follower.updates

        await cluster.stop(N2)
        with anyio.fail_after(WAIT):
            await service.wait_until(reconnects=1)
        assert service.nc.connected_url is not None
        now = cluster.node(service.nc.connected_url.port)
        assert now != N2
        with anyio.fail_after(WAIT):
            await service.follower.wait_updates(seen + 1)  # the index read again through the new node

        (other,) = {N1, N3} - {now}
        await lead(admin, cluster, other)
        asking = await stack.enter_async_context(login(cluster, other, "orchestrator"))
        observer = await stack.enter_async_context(login(cluster, other, "observer"))
        events, live = await listen(asking), await listen(observer)
        await cluster.heard(other, now, ASKED)
        await cluster.heard(now, other, EVENTS)
        client = LoaderClient(asking.nc, timeout=WAIT)
        # A cold load of a version it never fetched, then a publish that it loads and announces.
        assert (await client.load("taskserv", "etcd", "3.6.0"))["metadata"]["version"] == "3.6.0"
        await publish_release(publisher, source(tmp_path / "later", "etcd", "3.7.0"), signer, publishing)
        assert await wait_published(events, 1) == [(service.manager.instance_id, "3.7.0")]
        assert await wait_published(live, 1) == published(events)
        assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.7.0"
        await stored_and_replayed(cluster, admin, observer, announcement(events))

        await fleet_and_ping(service, asking, observer)
        assert (await client.stats())["registry"]["fetched"] == 3
        logins = (publisher, admin, orchestrator, asking, observer)
        assert [who.refusals for who in logins] == [[]] * len(logins)
    assert loader_refusals(caplog) == [] and cluster.violations() == []
