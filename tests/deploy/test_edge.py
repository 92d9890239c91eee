"""An edge site: a leaf node with JetStream of its own, linked to the hub, its loaders reading mirrors of the hub's
registry (deploy/edge's two files, run as documented, over TLS: `tests/deploy/edge.py`).

- `extension-loader setup` at the hub, `setup --site` at the site (as each one's admin) make the buckets and
  their mirrors; a release published at the hub is loaded, and announced with auto_update, by a loader at the
  site, and `extensions.stats` says how the mirror stands;
- with the link cut (the hub running on), site loaders load every version the mirror holds, fetched before or
  not, and the statistics say the hub is unreachable and how far behind the mirror is; once the link is back the
  mirror catches up and what was published meanwhile is announced, once; the same after the hub restarts;
- an automatic load whose archive the site's mirror does not hold yet is made once it does.

What a site cannot do to the hub, and what a forged mirror does not do to a loader: test_edge_attacks.py.

Nothing waits by the clock: on an event (a log line, an announcement, an index update, a look at the mirrors)
with a bounded time-out; the mirrors' catch-up after an outage is bounded by the server's own back-off (`CATCH_UP`).
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from service.app.client import LoaderClient
from service.contract.config import Config
from service.contract.messages import MirrorStats
from service.registry.index import Release
from service.registry.signing import Signer
from service.wire.service import ExtensionService
from tests.app.test_registry_cluster import published, source
from tests.conftest import WAIT
from tests.deploy.edge import (
    ARCHIVES,
    Edge,
    Login,
    announced,
    archive_at_site,
    archives_mirrored,
    hub_index_sequence,
    listen,
    login,
    mirrored,
    publish_at_hub,
    publisher_config,
    set_up,
    set_up_both,
    site_loader,
)

pytestmark = pytest.mark.anyio
log = logging.getLogger(__name__)


# --- the shipped files --------------------------------------------------------------------------------------------


async def test_a_release_published_at_the_hub_is_loaded_and_announced_from_the_site_s_mirror(
    edge: Edge, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    await edge.link_up()
    code, lines, _ = await set_up(edge, edge.hub)
    assert code == 0 and [line.split(":")[0] for line in lines] == [
        "events stream EXTENSION_EVENTS",
        "index bucket extension-index",
        "archive bucket extension-archives",
    ]
    code, lines, _ = await set_up(edge, edge.site, "--site", "--hub-domain", "hub")
    assert (code, lines) == (
        0,
        [
            "events stream EXTENSION_EVENTS: created (subjects extensions.loaded, extensions.unloaded; 1 replica)",
            "index mirror extension-index: created (mirror of KV_extension-index at $JS.hub.API; 1 replica)",
            "archive mirror extension-archives: created (mirror of OBJ_extension-archives at $JS.hub.API; 1 replica)",
        ],
    )
    code, lines, _ = await set_up(edge, edge.site, "--site")  # again: nothing to change
    assert code == 0 and [line.partition(": ")[2] for line in lines] == ["unchanged"] * 3
    # Setup without --site at the site, or with it at the hub, changes nothing and says why.
    code, lines, errors = await set_up(edge, edge.site)
    assert code == 1 and "refused 2 of 3" in errors
    assert "index bucket extension-index: refused (this is an edge site's mirror of KV_extension-index" in lines[1]
    code, lines, errors = await set_up(edge, edge.hub, "--site")
    assert code == 1 and "a stream over $KV.extension-index.> is here, not a mirror of the hub's" in lines[1]

    publishing = publisher_config(edge, tmp_path)
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(edge, edge.hub, "publisher"))
        hub_admin = await stack.enter_async_context(login(edge, edge.hub, "admin"))
        orchestrator = await stack.enter_async_context(login(edge, edge.site, "orchestrator"))
        await publish_at_hub(publisher, source(tmp_path, "etcd", "3.5.0"), signer, publishing)
        service = await stack.enter_async_context(site_loader(edge, tmp_path, "loader", signer))
        await mirrored(service, 1)
        events = await listen(orchestrator)
        client = LoaderClient(orchestrator.nc, timeout=WAIT)
        assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.5.0"

        start = time.monotonic()
        await publish_at_hub(publisher, source(tmp_path / "later", "etcd", "3.6.0"), signer, publishing)
        await announced(events, "3.6.0", WAIT)
        log.info("published at the hub, announced at the site in %.3f s", time.monotonic() - start)
        assert published(events) == [(service.manager.instance_id, "3.6.0")]

        sequence = await hub_index_sequence(hub_admin)
        assert service.follower is not None
        with anyio.fail_after(WAIT):
            await service.follower.wait_mirrors(lambda m: m.last_sequence == sequence)
        stats = (await client.stats())["registry"]
        assert stats["reachable"] is True and stats["fetched"] == 2
        mirror = stats["mirror"]
        assert mirror["hub_reachable"] is True and mirror["error"] is None
        assert mirror["last_sequence"] == sequence
        assert mirror["lag"] == 0 and mirror["heard_s"] is not None and mirror["heard_s"] < 5
        assert mirror["age_s"] is not None and mirror["age_s"] >= 0 and mirror["archives_last_sequence"] > 0
        assert [who.refusals for who in (publisher, hub_admin, orchestrator)] == [[]] * 3
    assert not [r for r in caplog.records if "violation" in r.getMessage().lower()]
    assert not [line for node in (edge.hub, edge.site) for line in node.log.log if "Violation" in line]


# --- the link down ------------------------------------------------------------------------------------------------


async def test_with_the_link_cut_site_loaders_load_what_the_mirror_holds_and_catch_up_once_it_is_back(
    edge: Edge, tmp_path: Path, signer: Signer
) -> None:
    """The relay between the site and the hub is cut: the hub runs on and takes a publish. The site's loader loads
    both versions its mirror holds (one fetched before, one never) and says the hub is out of reach, and how far
    behind the mirror is. Once the link is back the mirror catches up and the new version is announced, once."""
    await edge.link_up()
    await set_up_both(edge)
    publishing = publisher_config(edge, tmp_path)
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(edge, edge.hub, "publisher"))
        hub_admin = await stack.enter_async_context(login(edge, edge.hub, "admin"))
        orchestrator = await stack.enter_async_context(login(edge, edge.site, "orchestrator"))
        for version in ("3.5.0", "3.6.0"):
            await publish_at_hub(publisher, source(tmp_path / version, "etcd", version), signer, publishing)
        service = await stack.enter_async_context(site_loader(edge, tmp_path, "loader", signer))
        assert service.follower is not None
        await mirrored(service, 2)
        await archives_mirrored(service, hub_admin.nc)  # the two mirrors catch up each on its own
        events = await listen(orchestrator)
        client = LoaderClient(orchestrator.nc, timeout=WAIT)
        assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"
        before = await hub_index_sequence(hub_admin)

        await anyio.to_thread.run_sync(edge.relay.cut)
        with anyio.fail_after(WAIT):
            await service.follower.wait_mirrors(lambda m: not m.hub_reachable)
        await publish_at_hub(publisher, source(tmp_path / "3.7.0", "etcd", "3.7.0"), signer, publishing)
        assert await hub_index_sequence(hub_admin) == before + 1

        # Served from the mirror: a version fetched before, one never fetched, and `latest` as the mirror has it.
        assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"
        assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.6.0"
        stats = (await client.stats())["registry"]
        assert stats["reachable"] is True and stats["last_error"] is None  # the mirror answers
        mirror = stats["mirror"]
        assert mirror["hub_reachable"] is False
        assert mirror["last_sequence"] == before  # the hub has one more
        assert mirror["heard_s"] >= 5 and mirror["age_s"] is not None

        mended = time.monotonic()
        await anyio.to_thread.run_sync(edge.relay.mend)
        took = await announced(events, "3.7.0")
        log.info("link mended: 3.7.0 announced at the site %.1f s later", time.monotonic() - mended)
        with anyio.fail_after(WAIT):
            stats_now = await service.follower.wait_mirrors(lambda m: m.hub_reachable and m.last_sequence > before)
        assert stats_now.last_sequence == before + 1 and took >= 0
        # Nothing twice: the next publish is the next announcement.
        await publish_at_hub(publisher, source(tmp_path / "3.8.0", "etcd", "3.8.0"), signer, publishing)
        await announced(events, "3.8.0", WAIT)
        assert published(events) == [(service.manager.instance_id, v) for v in ("3.7.0", "3.8.0")]


async def test_after_the_hub_restarts_the_mirror_catches_up_and_nothing_is_announced_twice(
    edge: Edge, tmp_path: Path, signer: Signer
) -> None:
    """The hub stops and starts again on the same ports and store. The site's loader serves on meanwhile (a cold
    load from the mirror); once the link is made again, a version published at the hub is announced once."""
    await edge.link_up()
    await set_up_both(edge)
    publishing = publisher_config(edge, tmp_path)
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(edge, edge.hub, "publisher"))
        await publish_at_hub(publisher, source(tmp_path / "3.5.0", "etcd", "3.5.0"), signer, publishing)
        await publisher.nc.close()
        orchestrator = await stack.enter_async_context(login(edge, edge.site, "orchestrator"))
        service = await stack.enter_async_context(site_loader(edge, tmp_path, "loader", signer))
        assert service.follower is not None
        await mirrored(service, 1)
        events = await listen(orchestrator)
        client = LoaderClient(orchestrator.nc, timeout=WAIT)

        await anyio.to_thread.run_sync(edge.hub.stop)
        with anyio.fail_after(WAIT):
            await service.follower.wait_mirrors(lambda m: not m.hub_reachable)
        assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.5.0"  # never fetched before
        assert (await client.stats())["registry"]["mirror"]["hub_reachable"] is False

        await anyio.to_thread.run_sync(edge.hub.start)
        await edge.link_up(2)
        publisher = await stack.enter_async_context(login(edge, edge.hub, "publisher"))
        started = time.monotonic()
        await publish_at_hub(publisher, source(tmp_path / "3.6.0", "etcd", "3.6.0"), signer, publishing)
        await announced(events, "3.6.0")
        log.info("hub restarted: 3.6.0 announced at the site %.1f s after its publish", time.monotonic() - started)
        await publish_at_hub(publisher, source(tmp_path / "3.7.0", "etcd", "3.7.0"), signer, publishing)
        await announced(events, "3.7.0", WAIT)
        assert published(events) == [(service.manager.instance_id, v) for v in ("3.6.0", "3.7.0")]
        with anyio.fail_after(WAIT):
            await service.follower.wait_mirrors(lambda m: m.hub_reachable)


async def test_an_automatic_load_waits_for_the_archive_mirror_when_the_index_mirror_runs_ahead(
    edge: Edge, tmp_path: Path, signer: Signer
) -> None:
    """The two mirrors catch up on their own: the index's may hold a release before the archives' holds its
    archive. Here the site's archive mirror is gone (its admin deleted it) when a release is published at the hub:
    the statistics say so, the automatic load finds no archive, and once `setup --site` has made the archive mirror
    again and it has filled, the release is loaded and announced, once."""
    async with AsyncExitStack() as stack:
        at = await published_3_5(edge, tmp_path, signer, stack)
        service = await stack.enter_async_context(site_loader(edge, tmp_path, "loader", signer))
        assert service.follower is not None
        await mirrored(service, 1)
        events = await listen(at.orchestrator)

        gone, _ = await publish_with_the_archive_mirror_gone(service, at, tmp_path, signer)
        assert not gone.hub_reachable and "setup --site" in (gone.error or "")
        assert published(events) == []

        code, lines, _ = await set_up(edge, edge.site, "--site")
        assert code == 0 and lines[2].startswith("archive mirror extension-archives: created")
        await announced(events, "3.6.0", WAIT)
        await publish_at_hub(at.publisher, source(tmp_path / "3.7.0", "etcd", "3.7.0"), signer, at.publishing)
        await announced(events, "3.7.0", WAIT)
        assert published(events) == [(service.manager.instance_id, v) for v in ("3.6.0", "3.7.0")]


async def test_a_version_a_request_loads_before_the_automatic_retry_is_still_announced_as_published_once(
    edge: Edge, tmp_path: Path, signer: Signer
) -> None:
    """As above, the automatic load of 3.6.0 finds no archive at the site and waits for the archive mirror. Here a
    request loads 3.6.0 as soon as its archive is at the site, before the loader's next look at the mirrors (once a
    second) tries the automatic load again: the retry finds it loaded and still announces it, reason `published`
    (`cold` false: it ran no Nushell), once. Should the look come first (a few hundredths of a second in a second),
    the retry loads it itself (`cold` true) and the request is answered from that run: once either way."""
    async with AsyncExitStack() as stack:
        at = await published_3_5(edge, tmp_path, signer, stack)
        service = await stack.enter_async_context(site_loader(edge, tmp_path, "loader", signer))
        assert service.follower is not None
        await mirrored(service, 1)
        events = await listen(at.orchestrator)
        client = LoaderClient(at.orchestrator.nc, timeout=WAIT)

        _, release = await publish_with_the_archive_mirror_gone(service, at, tmp_path, signer)
        assert published(events) == []

        code, _, _ = await set_up(edge, edge.site, "--site")
        assert code == 0
        await archive_at_site(at.site_admin, release)
        loaded = await client.load("taskserv", "etcd", "3.6.0")
        assert loaded["metadata"]["version"] == "3.6.0" and loaded["digest"] == release.tree_digest
        await announced(events, "3.6.0", WAIT)
        mine = [e for e in events.bodies(".loaded") if e["instance_id"] == service.manager.instance_id]
        by_request = [e for e in mine if e["reason"] == "load"]
        (announcement,) = [e for e in mine if e["reason"] == "published"]
        assert announcement["extension"]["digest"] == release.tree_digest
        assert announcement["cold"] is not bool(by_request)  # loaded by the request first, or by the retry
        log.info("loaded first by %s", "the request" if by_request else "the automatic retry")

        await publish_at_hub(at.publisher, source(tmp_path / "3.7.0", "etcd", "3.7.0"), signer, at.publishing)
        await announced(events, "3.7.0", WAIT)
        assert later_than_3_5(published(events)) == [(service.manager.instance_id, v) for v in ("3.6.0", "3.7.0")]


async def test_an_automatic_load_still_owed_when_the_loader_restarts_is_made_and_announced_after_the_restart(
    edge: Edge, tmp_path: Path, signer: Signer
) -> None:
    """The automatic load of 3.6.0 waits for the archive mirror (deleted by the site's admin) when the loader is
    stopped. Started again on its data folder, it reads its saved index (3.6.0 is no news any more), and still makes
    the automatic load it owed once the archive is at the site, and announces it, once."""
    async with AsyncExitStack() as stack:
        at = await published_3_5(edge, tmp_path, signer, stack)
        events = await listen(at.orchestrator)
        async with site_loader(edge, tmp_path, "loader", signer) as service:
            await mirrored(service, 1)
            await publish_with_the_archive_mirror_gone(service, at, tmp_path, signer)
            first = service.manager.instance_id
        # (3.5.0 may have been announced: this loader's first reading can come before the index mirror holds it.)
        assert later_than_3_5(published(events)) == []

        code, _, _ = await set_up(edge, edge.site, "--site")
        assert code == 0
        async with site_loader(edge, tmp_path, "loader", signer) as again:
            await announced(events, "3.6.0", WAIT)
            await publish_at_hub(at.publisher, source(tmp_path / "3.7.0", "etcd", "3.7.0"), signer, at.publishing)
            await announced(events, "3.7.0", WAIT)
            assert later_than_3_5(published(events)) == [(again.manager.instance_id, v) for v in ("3.6.0", "3.7.0")]
            assert again.manager.instance_id != first


@dataclass
class OwedLoadLogins:
    """What the tests of an owed automatic load log in as: the hub's publisher (and its configuration), the site's
    admin and orchestrator."""

    publisher: Login
    publishing: Config
    site_admin: Login
    orchestrator: Login


async def published_3_5(edge: Edge, tmp_path: Path, signer: Signer, stack: AsyncExitStack) -> OwedLoadLogins:
    """The link up, the buckets and their mirrors made, the logins (kept open by `stack`), and etcd 3.5.0 published
    at the hub."""
    await edge.link_up()
    await set_up_both(edge)
    at = OwedLoadLogins(
        publisher=await stack.enter_async_context(login(edge, edge.hub, "publisher")),
        publishing=publisher_config(edge, tmp_path),
        site_admin=await stack.enter_async_context(login(edge, edge.site, "admin")),
        orchestrator=await stack.enter_async_context(login(edge, edge.site, "orchestrator")),
    )
    await publish_at_hub(at.publisher, source(tmp_path / "3.5.0", "etcd", "3.5.0"), signer, at.publishing)
    return at


async def publish_with_the_archive_mirror_gone(
    service: ExtensionService, at: OwedLoadLogins, tmp_path: Path, signer: Signer
) -> tuple[MirrorStats, Release]:
    """The site's admin deletes the archive mirror; once the loader's look at the mirrors says so, etcd 3.6.0 is
    published at the hub and reaches the index mirror: its automatic load found no archive, and is owed. The
    mirrors as that look saw them, and the release."""
    assert service.follower is not None
    assert await at.site_admin.nc.jetstream(timeout=WAIT).delete_stream(ARCHIVES)
    with anyio.fail_after(WAIT):
        gone = await service.follower.wait_mirrors(lambda m: m.error is not None)
    release = await publish_at_hub(at.publisher, source(tmp_path / "3.6.0", "etcd", "3.6.0"), signer, at.publishing)
    await mirrored(service, 2)  # the index mirror has it; its archive is nowhere at the site
    return gone, release


def later_than_3_5(announcements: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(who, version) for who, version in announcements if version != "3.5.0"]
