"""The registry under a bucket writer who changes a record while a load is under way, and under loads of one
archive that overlap: on a real JetStream server, with the core's `Releases` as the loader uses it."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest
from nats.aio.client import Client

from service.app.natsserver import NatsServer
from service.app.publishing import prepare, publish, yank
from service.contract.config import Config
from service.contract.errors import UntrustedExtension
from service.contract.messages import ExtensionType
from service.core.registry_access import RegistryAccess
from service.core.releases import Releases
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import decode_record, encode_record, index_key, object_name
from service.registry.signing import Signer, new_seed, statement
from tests.conftest import make_config, registry_settings, running_service, set_up_streams, write_extension

pytestmark = pytest.mark.anyio
T = ExtensionType.TASKSERV
KEY = index_key(T, "demo")


async def following(nc: Client, config: Config) -> Releases:
    """The loader's view of the registry, as its follower keeps it: the buckets open, the index read."""
    buckets = RegistryBuckets(nc)
    await buckets.open()
    access = RegistryAccess()
    access.opened(buckets)
    access.following()
    releases = Releases(config.registry, config.cache_dir / ".registry", access)
    releases.replace((u.key, u.value) for u in await buckets.index.entries())
    return releases


async def rewrite(nc: Client, releases: Releases, change: dict[str, object]) -> None:
    """A bucket writer changes the record of demo 1.0.0; the loader's follower sees it."""
    buckets = RegistryBuckets(nc)
    await buckets.open()
    value, revision = await buckets.index.get(KEY)
    assert value is not None
    record = decode_record(value)
    release = msgspec.structs.replace(record.releases["1.0.0"], **change)
    updated = encode_record(msgspec.structs.replace(record, releases={"1.0.0": release}))
    await buckets.index.put(KEY, updated, revision)
    releases.apply(KEY, updated)


@pytest.fixture
async def published(nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer) -> Config:
    config = make_config(nats_server.url, tmp_path, overrides=registry_settings(signer.public_key))
    await set_up_streams(nc, config)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    folder = write_extension(tmp_path / "checkout", "taskserv", "demo", "1.0.0", dependencies=["etcd"])
    await publish(buckets, await prepare(folder, signer, config))
    return config


async def test_a_record_swapped_while_a_load_is_under_way_is_refused_and_nothing_of_it_unpacked(
    nc: Client, tmp_path: Path, published: Config
) -> None:
    releases = await following(nc, published)
    info = releases.versions(T, "demo")["1.0.0"]
    assert info.untrusted is None  # chosen and judged trusted; then, before its fetch (dependencies load first):
    evil = write_extension(tmp_path / "evil", "taskserv", "demo", "1.0.0", module="# evil\n", dependencies=["etcd"])
    archive = pack(evil)
    digest = digest_bytes(archive)
    attacker = Signer.from_seed(new_seed())
    buckets = RegistryBuckets(nc)
    await buckets.open()
    await buckets.archives.put(object_name(digest), archive)
    await rewrite(
        nc,
        releases,
        {
            "digest": digest,
            "object": object_name(digest),
            "size": len(archive),
            "signer": attacker.public_key,
            "signature": attacker.sign(statement("taskserv", "demo", "1.0.0", digest)),
        },
    )
    with pytest.raises(UntrustedExtension, match="changed while it was being loaded"):
        await releases.fetch(info)
    assert not await anyio.Path(info.path).exists()
    assert not await anyio.Path(releases.folder / "trees" / digest.removeprefix("sha256:")).exists()


async def test_an_index_entry_whose_metadata_differs_from_its_signed_archive_is_refused(
    nc: Client, published: Config
) -> None:
    """The dependencies a load resolves are signed in the release statement: a writer who changes the index's copy
    of them is caught as soon as the record is read (before, only once the archive was unpacked), and nothing of
    the release is fetched or unpacked."""
    releases = await following(nc, published)
    await rewrite(nc, releases, {"dependencies": ("taskserv:redis",)})
    info = releases.versions(T, "demo")["1.0.0"]
    assert info.untrusted == "its index entry does not say what its signed statement says: dependencies differ"
    with pytest.raises(UntrustedExtension, match="dependencies differ"):
        await releases.fetch(info)
    assert not await anyio.Path(info.path).exists()
    assert releases.stats().fetched == 0


async def test_overlapping_fetches_of_one_archive_both_succeed_and_fetch_it_once(nc: Client, published: Config) -> None:
    releases = await following(nc, published)
    info = releases.versions(T, "demo")["1.0.0"]
    roots: list[Path] = []

    async def fetch() -> None:
        roots.append(await releases.fetch(info))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(fetch)
    assert len(set(roots)) == 1
    assert await anyio.Path(info.path / "metadata.toml").is_file()
    assert releases.stats().fetched == 1
    leftovers = [p.name async for p in anyio.Path(releases.folder / "archives").iterdir() if p.name.startswith(".")]
    assert leftovers == []


async def test_a_yank_of_a_version_the_disk_also_has_leaves_the_disk_s_copy_loaded(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    root = tmp_path / "root"
    folder = write_extension(root, "taskserv", "vault", "1.0.0")
    config = make_config(
        nats_server.url, tmp_path, roots=[root], overrides=registry_settings(signer.public_key, auto_update=True)
    )
    await set_up_streams(nc, config)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    await publish(buckets, await prepare(folder, signer, config))
    async with running_service(config) as service:
        assert service.follower is not None
        await service.manager.load(T, "vault", "1.0.0")
        seen = service.follower.updates
        await yank(buckets, T, "vault", "1.0.0", signer=signer)
        with anyio.fail_after(20):
            await service.follower.wait_updates(seen + 1)
        # The update was applied (the cache is changed before the count grows), the signed yank taken: the disk's
        # copy stays.
        assert service.manager.releases is not None
        assert service.manager.releases.versions(T, "vault")["1.0.0"].yanked
        assert [e.metadata.version for e in service.manager.loaded(T, "vault")] == ["1.0.0"]
