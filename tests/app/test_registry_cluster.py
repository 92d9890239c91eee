"""The registry on a real three-node nats-server cluster with JetStream, its buckets kept on all three (R3): a
version published through one node loads on a loader connected to another; with a node gone (one the loader is
not on, then the loader's own) loads, publishes and announcements go on; of two loaders only the one with
auto_update loads and announces a new version, and the other one's latest agrees.

No waiting by the clock: the cluster is ready (and, after a node stops, settled) when its monitoring says so,
and every wait is bounded and on an event or a count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import nats
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsCluster
from service.contract.config import Config
from service.contract.messages import ExtensionType
from service.registry.index import Release
from service.registry.names import DEFAULT_NAMES
from service.registry.signing import Signer
from service.wire.service import ExtensionService, flush_subscriptions
from tests.conftest import (
    WAIT,
    EventLog,
    lead,
    make_config,
    publish_folder,
    registry_settings,
    running_service,
    write_extension,
)

pytestmark = pytest.mark.anyio
T = ExtensionType.TASKSERV
INDEX = f"KV_{DEFAULT_NAMES.index}"
STREAMS = (INDEX, f"OBJ_{DEFAULT_NAMES.archives}")


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    """A client of one node only (a publisher's, or a caller's): it never moves to another."""
    nc = await nats.connect(url, name="test-client", allow_reconnect=False, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


async def listen(nc: Client) -> EventLog:
    events = EventLog()
    await nc.subscribe("extensions.loaded", cb=events.add)
    await nc.subscribe("extensions.unloaded", cb=events.add)
    await flush_subscriptions(nc)
    return events


def source(tmp_path: Path, name: str, version: str, *, dependencies: list[str] | None = None) -> Path:
    """An extension folder in a publisher's checkout, outside any loader's roots."""
    return write_extension(tmp_path / "checkout" / version, "taskserv", name, version, dependencies=dependencies)


def loader_config(tmp_path: Path, name: str, urls: list[str], signer: Signer, *, auto_update: bool = False) -> Config:
    """A loader with an empty data folder of its own and no extension tree on disk: the registry is all it has."""
    empty = tmp_path / name / "no-tree"
    empty.mkdir(parents=True)
    config = make_config(
        ",".join(urls),
        tmp_path / name,
        roots=[empty],
        overrides=registry_settings(signer.public_key, auto_update=auto_update),
    )
    assert not config.cache_dir.exists()
    return config


async def publish_r3(url: str, folder: Path, signer: Signer, config: Config) -> Release:
    """`extension-loader publish --replicas 3` through the node at `url`."""
    async with connected(url) as nc:
        return await publish_folder(nc, folder, signer, config, replicas=3)


async def stop(cluster: NatsCluster, node: int) -> None:
    """Stops one node; returns once the two others have a metadata leader and both streams a leader again."""
    await anyio.to_thread.run_sync(cluster.servers[node].stop)
    await anyio.to_thread.run_sync(cluster.wait_settled, STREAMS)


@asynccontextmanager
async def loader_watching_from_elsewhere(
    config: Config, cluster: NatsCluster, own: int, nc: Client
) -> AsyncIterator[tuple[ExtensionService, int]]:
    """A loader on node `own` whose index watch's consumer is on another node, and that node. The server puts
    the consumer on one of the stream's three nodes at random: a loader whose consumer landed on its own node
    is stopped and started again (ten times at most: one run in 59,000 would fail)."""
    jsm = nc.jsm()
    for _ in range(10):
        before = {c.name for c in await jsm.consumers_info(INDEX)}  # a stopped watch leaves its consumer a while
        async with running_service(config) as service:
            (watch,) = [c for c in await jsm.consumers_info(INDEX) if c.name not in before]
            assert watch.cluster is not None and watch.cluster.leader is not None
            node = cluster.names.index(watch.cluster.leader)
            if node != own:
                yield service, node
                return
    pytest.fail("the index watch's consumer was on the loader's own node ten times in a row")


async def wait_following(service: ExtensionService, after: int) -> None:
    """Returns once the loader's follower has applied an index reading after its `after`-th."""
    assert service.follower is not None
    with anyio.fail_after(WAIT):
        await service.follower.wait_updates(after + 1)


def published(events: EventLog) -> list[tuple[str, str]]:
    """(instance, version) of every `extensions.loaded` with reason `published` so far."""
    return [
        (e["instance_id"], e["extension"]["metadata"]["version"])
        for e in events.bodies(".loaded")
        if e["reason"] == "published"
    ]


async def wait_published(events: EventLog, count: int) -> list[tuple[str, str]]:
    with anyio.fail_after(WAIT):
        while len(published(events)) < count:
            await events.wait_for(len(events.bodies(".loaded")) + 1, ".loaded")
    return published(events)


# --- 1. published through node 1, loaded through node 3 ---


async def test_a_version_published_through_one_node_loads_with_its_dependencies_on_a_loader_of_another(
    js_cluster: NatsCluster, tmp_path: Path, signer: Signer
) -> None:
    n1, _, n3 = js_cluster.servers
    config = loader_config(tmp_path, "loader", [n3.url], signer)
    await publish_r3(n1.url, source(tmp_path, "containerd", "1.7.13"), signer, config)
    await publish_r3(n1.url, source(tmp_path, "etcd", "3.5.0"), signer, config)
    release = await publish_r3(
        n1.url,
        source(tmp_path, "kubernetes", "1.28.0", dependencies=["containerd@^1.7", "etcd@>=3.5"]),
        signer,
        config,
    )
    async with connected(n1.url) as nc:
        for stream in STREAMS:
            assert (await nc.jetstream().stream_info(stream)).config.num_replicas == 3, stream

    async with running_service(config) as service, connected(n3.url) as nc:
        assert service.nc.connected_url is not None and service.nc.connected_url.port == n3.port
        events = await listen(nc)
        client = LoaderClient(nc, timeout=WAIT)
        loaded = await client.load("taskserv", "kubernetes", with_dependencies=True)
        assert loaded["metadata"]["version"] == "1.28.0"
        assert loaded["digest"] == release.tree_digest  # what Nushell loaded is what was published
        done = await events.wait_for(3, ".loaded")
        assert sorted(e["extension"]["metadata"]["name"] for e in done) == ["containerd", "etcd", "kubernetes"]
        assert {e["reason"] for e in done} == {"load"}
        stats = await client.stats()
        assert stats["registry"]["reachable"] is True
        assert (stats["registry"]["fetched"], stats["registry"]["extensions"]) == (3, 3)


# --- 2. a node stops ---


async def test_with_a_node_gone_that_the_loader_is_not_on_loads_publishes_and_announcements_go_on(
    js_cluster: NatsCluster, tmp_path: Path, signer: Signer
) -> None:
    """The node that stops holds what the loader reads through the cluster: the leaders of both streams and the
    consumer of its index watch. The loader stays connected to node 3 throughout."""
    n3 = js_cluster.servers[2]
    config = loader_config(tmp_path, "loader", [n3.url], signer, auto_update=True)
    for version in ("3.5.0", "3.6.0"):
        await publish_r3(js_cluster.servers[0].url, source(tmp_path, "etcd", version), signer, config)
    await publish_r3(js_cluster.servers[0].url, source(tmp_path, "redis", "7.0.0"), signer, config)

    async with connected(n3.url) as nc, loader_watching_from_elsewhere(config, js_cluster, 2, nc) as (service, gone):
        assert service.follower is not None
        await lead(js_cluster, gone, STREAMS)
        events = await listen(nc)
        client = LoaderClient(nc, timeout=WAIT)
        assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"

        await stop(js_cluster, gone)
        # Cold loads of versions this loader never fetched.
        assert (await client.load("taskserv", "etcd", "3.6.0"))["metadata"]["version"] == "3.6.0"
        assert (await client.load("taskserv", "redis"))["metadata"]["version"] == "7.0.0"
        # A publish through the node that is left beside the loader's, loaded and announced by the loader.
        left = js_cluster.servers[1 - gone]
        await publish_r3(left.url, source(tmp_path / "later", "etcd", "3.7.0"), signer, config)
        assert await wait_published(events, 1) == [(service.manager.instance_id, "3.7.0")]
        assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.7.0"
        stats = await client.stats()
        assert stats["registry"]["reachable"] is True
        assert stats["registry"]["fetched"] == 4
        assert service.reconnects == 0  # it never left node 3


async def test_with_the_loader_s_own_node_gone_it_reconnects_and_loads_publishes_and_announcements_go_on(
    js_cluster: NatsCluster, tmp_path: Path, signer: Signer
) -> None:
    config = loader_config(tmp_path, "loader", js_cluster.urls, signer, auto_update=True)
    first = js_cluster.servers[0].url
    for version in ("3.5.0", "3.6.0"):
        await publish_r3(first, source(tmp_path, "etcd", version), signer, config)
    await publish_r3(first, source(tmp_path, "redis", "7.0.0"), signer, config)

    async with running_service(config) as service:
        assert service.follower is not None and service.nc.connected_url is not None
        own = js_cluster.node(service.nc.connected_url.port)
        other = (own + 1) % 3  # where this test's client and the publisher stay
        await lead(js_cluster, own, STREAMS)  # the loader's node leads both streams too
        async with connected(js_cluster.servers[other].url) as nc:
            events = await listen(nc)
            client = LoaderClient(nc, timeout=WAIT)
            assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"
            seen = service.follower.updates

            await stop(js_cluster, own)
            with anyio.fail_after(WAIT):
                await service.wait_until(reconnects=1)
            assert service.nc.connected_url is not None
            assert js_cluster.node(service.nc.connected_url.port) != own
            await wait_following(service, seen)  # the index read again through the new node

            assert (await client.load("taskserv", "etcd", "3.6.0"))["metadata"]["version"] == "3.6.0"
            assert (await client.load("taskserv", "redis"))["metadata"]["version"] == "7.0.0"
            later = source(tmp_path / "later", "etcd", "3.7.0")
            await publish_r3(js_cluster.servers[other].url, later, signer, config)
            assert await wait_published(events, 1) == [(service.manager.instance_id, "3.7.0")]
            stats = await client.stats()
            assert stats["registry"]["reachable"] is True
            assert stats["registry"]["fetched"] == 4


# --- 3. two loaders, one with auto_update ---


async def test_of_two_loaders_only_the_auto_updating_one_loads_a_publish_and_the_other_s_latest_agrees(
    js_cluster: NatsCluster, tmp_path: Path, signer: Signer
) -> None:
    n1, n2, n3 = js_cluster.servers
    eager = loader_config(tmp_path, "eager", [n1.url], signer, auto_update=True)
    lazy = loader_config(tmp_path, "lazy", [n2.url], signer, auto_update=False)
    await publish_r3(n3.url, source(tmp_path, "etcd", "3.5.0"), signer, eager)

    async with (
        running_service(eager, instance_id="EAGER") as a,
        running_service(lazy, instance_id="LAZY") as b,
        connected(n3.url) as nc,
    ):
        assert a.follower is not None and b.follower is not None
        events = await listen(nc)
        assert (await b.manager.load(T, "etcd", None)).extension.metadata.version == "3.5.0"
        seen = b.follower.updates

        await publish_r3(n3.url, source(tmp_path / "later", "etcd", "3.6.0"), signer, eager)
        assert await wait_published(events, 1) == [("EAGER", "3.6.0")]
        await wait_following(b, seen)  # the lazy one has read the same change of the index
        assert published(events) == [("EAGER", "3.6.0")]  # and announced nothing of its own
        assert [e.metadata.version for e in b.manager.loaded(T)] == ["3.5.0"]  # nor loaded it ahead

        (etcd,) = await b.manager.discover(T, "etcd")
        assert etcd.latest is not None and etcd.latest.version == "3.6.0"
        assert etcd.versions == ("3.6.0", "3.5.0")
        assert (await b.manager.load(T, "etcd", None)).extension.metadata.version == "3.6.0"
        status = await LoaderClient(nc, timeout=WAIT).gather(
            "status", {"extension_type": "taskserv", "name": "etcd"}, replies=2
        )
        assert status.answers == [
            {"instance_id": "EAGER", "data": {"loaded": True, "versions": ["3.6.0"]}},
            {"instance_id": "LAZY", "data": {"loaded": True, "versions": ["3.6.0", "3.5.0"]}},
        ]
