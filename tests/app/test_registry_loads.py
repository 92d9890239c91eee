"""The registry end to end, on a real nats-server with JetStream and real Nushell: publish once, load on a loader
with no extension tree, see where versions come from, publish a version only once, yank, update
automatically, refuse what is not trusted, and keep serving what was fetched when JetStream is gone."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.app.publishing import PublishRefused, prepare, publish, yank
from service.app.serve import auto_load
from service.contract.messages import ExtensionType
from service.registry.buckets import RegistryBuckets
from service.registry.signing import Signer, read_seed, write_seed
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

pytestmark = pytest.mark.anyio
T = ExtensionType.TASKSERV


def source(tmp_path: Path, name: str, version: str, *, dependencies: list[str] | None = None) -> Path:
    """An extension folder outside any loader's roots: what a publisher has in its checkout."""
    return write_extension(tmp_path / "checkout", "taskserv", name, version, dependencies=dependencies)


async def test_a_published_version_loads_on_a_loader_with_no_tree_on_disk(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, events: EventLog
) -> None:
    empty = tmp_path / "no-tree"
    empty.mkdir()
    config = make_config(nats_server.url, tmp_path, roots=[empty], overrides=registry_settings(signer.public_key))
    await publish_folder(nc, source(tmp_path, "containerd", "1.7.13"), signer, config)
    release = await publish_folder(
        nc, source(tmp_path, "kubernetes", "1.28.0", dependencies=["containerd@^1.7"]), signer, config
    )
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        loaded = await client.load("taskserv", "kubernetes", with_dependencies=True)
        assert loaded["metadata"]["version"] == "1.28.0"
        assert loaded["digest"] == release.tree_digest  # what Nushell loaded is what was published
        assert await anyio.Path(loaded["path"]).is_dir()
        done = await events.wait_for(2, ".loaded")
        assert [e["extension"]["metadata"]["name"] for e in done] == ["containerd", "kubernetes"]
        kept = (
            service.config.cache_dir / ".registry" / "archives" / (release.digest.removeprefix("sha256:") + ".tar.gz")
        )
        assert kept.is_file()
        stats = await client.stats()
        assert stats["registry"]["reachable"] is True
        assert stats["registry"]["fetched"] == 2
        assert (stats["registry"]["extensions"], stats["registry"]["versions"]) == (2, 2)


async def test_discover_shows_disk_and_registry_versions_with_where_each_comes_from(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    root = tmp_path / "root"
    write_extension(root, "taskserv", "etcd", "3.5.0")
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides=registry_settings(signer.public_key))
    await publish_folder(nc, source(tmp_path, "etcd", "3.6.0"), signer, config)
    async with running_service(config):
        client = LoaderClient(nc, timeout=WAIT)
        (etcd,) = await client.discover("taskserv", "etcd")
        assert etcd["versions"] == ["3.6.0", "3.5.0"]
        assert etcd["sources"] == [
            {"version": "3.6.0", "source": "registry", "yanked": False, "trusted": True},
            {"version": "3.5.0", "source": "disk", "yanked": False, "trusted": True},
        ]
        assert (await client.load("taskserv", "etcd"))["metadata"]["version"] == "3.6.0"


async def test_a_version_is_published_once_and_of_two_racing_publishers_exactly_one_wins(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    config = make_config(nats_server.url, tmp_path)
    await set_up_streams(nc, config)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    first = await prepare(source(tmp_path / "a", "redis", "7.0.0"), signer, config)
    other = write_extension(tmp_path / "b", "taskserv", "redis", "7.0.0", module="export def other [] { 2 }\n")
    second = await prepare(other, signer, config)
    assert first.release.digest != second.release.digest
    outcomes: list[object] = []

    async def attempt(prepared: object) -> None:
        try:
            outcomes.append(await publish(buckets, prepared))  # type: ignore[arg-type]
        except PublishRefused as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt, first)
        tg.start_soon(attempt, second)
    refused = [o for o in outcomes if isinstance(o, PublishRefused)]
    assert len(refused) == 1 and "already published" in str(refused[0])
    with pytest.raises(PublishRefused, match="already published"):
        await publish(buckets, first)
    # The loser's archive is gone; the winner's is there: no entry points at a missing object, no orphan stays.
    winner = next(o for o in outcomes if not isinstance(o, PublishRefused))
    loser = second if winner.release.digest == first.release.digest else first  # type: ignore[attr-defined]
    assert await buckets.archives.info(winner.release.object) is not None  # type: ignore[attr-defined]
    assert await buckets.archives.info(loser.release.object) is None


async def test_yank_skips_a_version_for_latest_keeps_a_pin_and_is_announced(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, events: EventLog
) -> None:
    config = make_config(
        nats_server.url,
        tmp_path,
        roots=[tmp_path / "none"],
        overrides=registry_settings(signer.public_key, auto_update=True),
    )
    await publish_folder(nc, source(tmp_path / "1", "vault", "1.0.0"), signer, config)
    await publish_folder(nc, source(tmp_path / "2", "vault", "1.1.0"), signer, config)
    async with running_service(config) as service:
        assert service.follower is not None
        client = LoaderClient(nc, timeout=WAIT)
        assert (await client.load("taskserv", "vault"))["metadata"]["version"] == "1.1.0"
        seen = service.follower.updates
        buckets = RegistryBuckets(nc)
        await buckets.open()
        await yank(buckets, T, "vault", "1.1.0", signer=signer)
        (unloaded,) = await events.wait_for(1, ".unloaded")
        assert (unloaded["reason"], unloaded["version"]) == ("yanked", "1.1.0")
        with anyio.fail_after(WAIT):
            await service.follower.wait_updates(seen + 1)
        assert (await client.load("taskserv", "vault"))["metadata"]["version"] == "1.0.0"
        assert (await client.load("taskserv", "vault", "1.1.0"))["metadata"]["version"] == "1.1.0"  # pinned
        (vault,) = await client.discover("taskserv", "vault")
        assert vault["versions"] == ["1.0.0"]
        assert vault["latest"]["version"] == "1.0.0"
        assert {s["version"]: s["yanked"] for s in vault["sources"]} == {"1.1.0": True, "1.0.0": False}
        await yank(buckets, T, "vault", "1.1.0", signer=signer, undo=True)
        with anyio.fail_after(WAIT):
            await service.follower.wait_updates(seen + 2)
        (vault,) = await client.discover("taskserv", "vault")
        assert vault["latest"]["version"] == "1.1.0"


async def test_auto_update_loads_a_newly_published_latest_before_any_request(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, events: EventLog
) -> None:
    config = make_config(
        nats_server.url,
        tmp_path,
        roots=[tmp_path / "none"],
        overrides=registry_settings(signer.public_key, auto_update=True),
    )
    await publish_folder(nc, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
    async with running_service(config):
        await publish_folder(nc, source(tmp_path / "2", "etcd", "3.6.0"), signer, config)
        (loaded,) = await events.wait_for(1, ".loaded")
        assert loaded["reason"] == "published"
        assert loaded["extension"]["metadata"]["version"] == "3.6.0"
        client = LoaderClient(nc, timeout=WAIT)
        assert (await client.status("taskserv", "etcd"))["versions"] == ["3.6.0"]
        # An older version published later is not the latest: nothing is loaded for it.
        await publish_folder(nc, source(tmp_path / "3", "etcd", "3.4.0"), signer, config)
        await publish_folder(nc, source(tmp_path / "4", "etcd", "3.7.0"), signer, config)
        done = await events.wait_for(2, ".loaded")
        assert [e["extension"]["metadata"]["version"] for e in done] == ["3.6.0", "3.7.0"]


async def test_a_version_signed_by_a_key_the_loader_does_not_trust_is_refused(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    write_seed(tmp_path / "trusted.nk")
    trusted = read_seed(tmp_path / "trusted.nk")
    config = make_config(
        nats_server.url, tmp_path, roots=[tmp_path / "none"], overrides=registry_settings(trusted.public_key)
    )
    await publish_folder(nc, source(tmp_path, "etcd", "3.6.0"), signer, config)
    caplog.set_level(logging.INFO, "service.app.serve")
    async with running_service(config) as service:
        await auto_load(service)  # as `orchestrator.extensions.auto_load` runs it at start: it says why it skips
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto_load skips")]
        assert said == [
            "auto_load skips taskserv etcd: no version it may load (the registry's are untrusted or yanked; "
            "`discover` says which)"
        ]
        client = LoaderClient(nc, timeout=WAIT)
        with pytest.raises(RemoteError) as caught:
            await client.load("taskserv", "etcd", "3.6.0")
        error = caught.value
        assert error.code == "untrusted_extension"
        assert error.details["signer"] == signer.public_key
        assert error.details["version"] == "3.6.0"
        assert "not one of the keys this loader trusts" in error.details["reason"]
        assert not (service.config.cache_dir / ".registry" / "trees").exists()  # nothing unpacked
        stats = await client.stats()
        assert stats["registry"]["refused"] == 1
        (etcd,) = await client.discover("taskserv", "etcd")
        assert etcd["sources"] == [{"version": "3.6.0", "source": "registry", "yanked": False, "trusted": False}]
        assert etcd["latest"] is None


async def test_without_jetstream_a_loader_serves_what_it_fetched_and_says_the_registry_is_unreachable(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    settings = registry_settings(signer.public_key)
    config = make_config(nats_server.url, tmp_path, roots=[tmp_path / "none"], overrides=settings)
    await publish_folder(nc, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
    await publish_folder(nc, source(tmp_path / "2", "etcd", "3.6.0"), signer, config)
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"
        registry_folder = service.config.cache_dir / ".registry"
    shutil.rmtree(registry_folder / "trees")  # only the kept archive is left: it is what must serve

    plain = NatsServer(["-a", "127.0.0.1", "-p", "-1"])  # no JetStream at all
    plain.start()
    try:
        offline = make_config(plain.url, tmp_path, roots=[tmp_path / "none"], overrides=settings)
        async with running_service(offline) as service:
            other = await nats.connect(plain.url)
            try:
                client = LoaderClient(other, timeout=WAIT)
                stats = await client.stats()
                assert stats["registry"]["reachable"] is False
                assert stats["registry"]["last_error"]
                assert stats["registry"]["versions"] == 2  # the saved index
                loaded = await client.load("taskserv", "etcd", "3.5.0")
                assert loaded["metadata"]["version"] == "3.5.0"
                with anyio.fail_after(WAIT), pytest.raises(RemoteError) as caught:
                    await client.load("taskserv", "etcd", "3.6.0")
                assert caught.value.code == "unavailable"
                assert "never fetched" in caught.value.message
            finally:
                await other.close()
    finally:
        plain.stop()
