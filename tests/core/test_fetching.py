"""Fetching a release (`ReleaseFetcher`, through `Releases.fetch`) from a real JetStream archive bucket: the archive
downloaded, checked against its signed digest, kept, unpacked, and the unpacked tree checked against the signed tree
digest on every fetch; and each way a fetch is refused or fails, with the reason word for word, what it leaves on
disk, what it counts and its audit line. (What Nushell then loads from the tree is tested end to end in tests/app.)

Releases are published as `extension-loader publish` publishes them (`publish_folder`), or by hand where a holder
of the trusted key writes what `publish` would refuse (`tests/registry/signed.py`). Nothing sleeps: every wait is
bounded.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import random
import shutil
import tarfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client

from service.contract.config import Config, RegistryConfig
from service.contract.errors import InvalidExtension, Unavailable, UntrustedExtension
from service.contract.messages import ExtensionType
from service.core.fetching import ReleaseFetcher, _same_dependencies, unpack_limits
from service.core.folders import tree_digest
from service.core.registry_access import RegistryAccess
from service.core.releases import Releases
from service.core.trust import Trust
from service.core.version_info import VersionInfo
from service.registry.archive import UnpackLimits, digest_bytes, digest_file, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import Release, decode_record, encode_record, index_key
from service.registry.mirror import MirrorReading
from service.registry.names import BucketNames
from service.registry.statements import ReleaseStatement, read
from tests.conftest import (
    WAIT,
    JetStreamServer,
    make_config,
    publish_folder,
    registry_settings,
    set_up_streams,
    write_extension,
)
from tests.registry import signed

pytestmark = pytest.mark.anyio
T = ExtensionType.TASKSERV
KEY = signed.key()
OTHER = signed.key()  # a key this loader does not trust
SMALL = 64 * 1024  # an archive up to this size is unpacked and checked on the event loop
EDITED = "export def check [] { {ok: false} }\n"


def registry(**more: Any) -> RegistryConfig:
    settings = registry_settings(KEY.public_key, **more)
    return make_config("nats://127.0.0.1:4222", Path("/nonexistent"), overrides=settings).registry


def test_the_unpack_limits_are_the_configured_ones_in_bytes() -> None:
    assert unpack_limits(registry(max_archive_mb=3, max_unpacked_mb=5, max_files=7)) == UnpackLimits(
        max_archive_bytes=3 * 1024 * 1024, max_unpacked_bytes=5 * 1024 * 1024, max_files=7
    )
    assert unpack_limits(registry()) == UnpackLimits(
        max_archive_bytes=64 * 1024 * 1024, max_unpacked_bytes=256 * 1024 * 1024, max_files=10_000
    )


def test_a_release_is_unpacked_under_the_hex_of_its_archive_digest(tmp_path: Path) -> None:
    config = registry(max_archive_mb=2)
    fetcher = ReleaseFetcher(config, tmp_path, Trust(config.trusted), RegistryAccess())
    release = signed.release(KEY, signed.statement(digest="sha256:" + "0a" * 32))
    assert fetcher.tree(release) == tmp_path / "trees" / ("0a" * 32)
    assert fetcher.limits == unpack_limits(config)
    assert fetcher.fetched == 0


# --- a registry on a real JetStream server, and a loader's folder of archives and trees ----------------------


def hexdigest(release: Release) -> str:
    return release.digest.removeprefix("sha256:")


def contents(folder: Path) -> list[str]:
    """Everything under a folder (files and folders), relative to it; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def kept(release: Release) -> str:
    return f"archives/{hexdigest(release)}.tar.gz"


def unpacked(release: Release, name: str, version: str, *files: str) -> list[str]:
    """What `contents` lists of a release unpacked: its folders down to the version's, then `files` in it."""
    top = f"trees/{hexdigest(release)}"
    folders = [top, f"{top}/taskservs", f"{top}/taskservs/{name}", f"{top}/taskservs/{name}/{version}"]
    return folders + [f"{folders[-1]}/{f}" for f in files]


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    """Each audit line: its text, and the fields it carries besides (the digest, the signer)."""
    common = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
    lines = [r for r in caplog.records if r.name == "service.audit"]
    return [(r.getMessage(), {k: v for k, v in r.__dict__.items() if k not in common}) for r in lines]


def line(
    action: str, key: str, outcome: str, message: str, release: Release, *, signer: bool = True
) -> tuple[str, dict[str, Any]]:
    """The audit line of a fetch or refusal of `release`, as `audit.record` writes it outside a request: with the
    release's digest, and its signer unless told otherwise."""
    text = f"{action} {key}: {outcome}{f' {message}' if message else ''} (by extension-loader)"
    fields = {"action": action, "extension": key, "outcome": outcome, "requester": "extension-loader"}
    fields |= {"digest": release.digest, **({"signer": release.signer} if signer else {})}
    return text, fields


def fetched_line(key: str, release: Release) -> tuple[str, dict[str, Any]]:
    return line("fetched", key, "ok", "", release)


def refusal(key: str, code: str, reason: str, release: Release) -> tuple[str, dict[str, Any]]:
    return line("refused", key, code, reason, release)


def refused_after_its_fetch(
    reg: Registry,
    audit: pytest.LogCaptureFixture,
    release: Release,
    key: str,
    code: str,
    reason: str,
    *,
    refused: int = 1,
) -> None:
    """What a release refused once its archive was fetched leaves: the archive kept (it is the signed one), nothing
    under trees/, one fetch, `refused` refusals counted (an invalid archive counts none) and audited after the
    fetch, each with its code and reason."""
    assert contents(reg.folder) == ["archives", kept(release), "trees"]
    counted = refused if code == "untrusted_extension" else 0
    assert (reg.fetcher.fetched, reg.releases.refused) == (1, counted)
    assert audit_lines(audit) == [fetched_line(key, release), *[refusal(key, code, reason, release)] * refused]


def untrusted(caught: pytest.ExceptionInfo[UntrustedExtension], name: str, reason: str) -> None:
    """The refusal of `name` 1.0.0, signed by KEY, for `reason` (word for word)."""
    assert caught.value.details() == {
        "extension_type": "taskserv",
        "name": name,
        "version": "1.0.0",
        "reason": reason,
        "signer": KEY.public_key,
    }


def checkout(root: Path, name: str, *, description: str | None = None, dependencies: str = "") -> Path:
    """An extension folder `name` 1.0.0 whose metadata says what `signed.statement` signs (its description
    `<name> 1.0.0`) unless told otherwise."""
    metadata = (
        f'name = "{name}"\nversion = "1.0.0"\ndescription = "{description or f"{name} 1.0.0"}"\n'
        f'type = "taskserv"\ndependencies = [{dependencies}]\n'
    )
    return write_extension(root / name, "taskserv", name, "1.0.0", metadata=metadata)


@dataclass
class Registry:
    """The registry's buckets on one server, a publisher writing to them, and one loader's `Releases` reading
    them (its folder of archives and trees: `folder`)."""

    nc: Client
    buckets: RegistryBuckets
    config: Config
    releases: Releases
    checkout: Path

    @property
    def folder(self) -> Path:
        return self.releases.folder

    @property
    def fetcher(self) -> ReleaseFetcher:
        return self.releases._fetcher

    async def publish(self, name: str, version: str = "1.0.0", **extension: Any) -> Release:
        """Publishes an extension written for it (`write_extension`'s arguments) as `extension-loader publish`
        does; the loader reads the index again."""
        folder = write_extension(self.checkout / f"{name}-{version}", "taskserv", name, version, **extension)
        release = await publish_folder(self.nc, folder, KEY, self.config)
        await self.read_index()
        return release

    async def publish_by_hand(self, name: str, archive: bytes, **statement: Any) -> Release:
        """Stores `archive` and indexes it as `name` 1.0.0 signed by KEY, its statement as given (the digest and
        size those of `archive` unless given): what a holder of the key can write past `publish`'s checks."""
        fields = {"digest": digest_bytes(archive), "size": len(archive), **statement}
        release = signed.release(KEY, signed.statement(name, "1.0.0", **fields))
        await set_up_streams(self.nc, self.config)
        key = index_key(T, name)
        value, revision = await self.buckets.index.get(key)
        before = decode_record(value) if value is not None else None
        record = signed.extended(before, KEY, release, kind=T, name=name)
        await self.buckets.archives.put(release.object, archive)
        await self.buckets.index.put(key, encode_record(record), revision)
        await self.read_index()
        return release

    async def read_index(self) -> None:
        self.releases.replace([(u.key, u.value) for u in await self.buckets.index.entries()])

    def info(self, name: str, version: str = "1.0.0") -> VersionInfo:
        return self.releases.versions(T, name)[version]

    async def fetch(self, name: str, version: str = "1.0.0") -> Path:
        return await self.releases.fetch(self.info(name, version))


async def open_buckets(nc: Client, config: Config) -> RegistryBuckets:
    names = BucketNames(index=config.registry.index_bucket, archives=config.registry.archive_bucket)
    buckets = RegistryBuckets(nc, names, timeout_s=WAIT)
    await buckets.open()
    return buckets


@asynccontextmanager
async def registry_on(
    url: str, tmp_path: Path, *, loader: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[Registry]:
    """A registry on the server at `url`, and a loader (`registry.<settings>`) following it: on the publisher's
    connection, or on one of its own made with `loader` (nats.connect's options)."""
    config = make_config(
        url, tmp_path, roots=[tmp_path / "no-tree"], overrides=registry_settings(KEY.public_key, **settings)
    )
    async with AsyncExitStack() as stack:
        publisher = await nats.connect(url, allow_reconnect=False, **(loader or {}).get("publisher", {}))
        stack.push_async_callback(publisher.close)
        await set_up_streams(publisher, config)
        buckets = await open_buckets(publisher, config)
        access = RegistryAccess()
        if loader is None:
            access.opened(buckets)
        else:
            own = await nats.connect(url, allow_reconnect=False, error_cb=quiet, **loader["loader"])
            stack.push_async_callback(own.close)
            access.opened(await open_buckets(own, config))
        access.following()
        releases = Releases(config.registry, tmp_path / "registry", access)
        yield Registry(publisher, buckets, config, releases, tmp_path / "checkout")


async def quiet(exc: Exception) -> None:
    pass  # a refused permission is what the test is about


@pytest.fixture
async def reg(js_server: JetStreamServer, tmp_path: Path) -> AsyncIterator[Registry]:
    async with registry_on(js_server.url, tmp_path) as opened:
        yield opened


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="service.audit")
    return caplog


MODULE = "export def check [] { {ok: true} }\n"  # what write_extension writes


# --- fetched, kept, unpacked -----------------------------------------------------------------------------------


async def test_a_release_is_downloaded_once_kept_and_unpacked_as_signed(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    root = await reg.fetch("redis")
    assert root == reg.folder / "trees" / hexdigest(release)
    files = unpacked(release, "redis", "1.0.0", "metadata.toml", "mod.nu")
    assert contents(reg.folder) == ["archives", kept(release), "trees", *files]
    assert digest_file(reg.folder / kept(release)) == release.digest
    assert tree_digest(root / "taskservs" / "redis" / "1.0.0") == release.tree_digest
    assert (root / "taskservs" / "redis" / "1.0.0" / "mod.nu").read_text() == MODULE
    assert (reg.fetcher.fetched, reg.releases.stats().fetched, reg.releases.refused) == (1, 1, 0)
    assert audit_lines(audit) == [fetched_line("taskserv:redis:1.0.0", release)]

    # Fetched again: the tree is there and as signed, nothing is downloaded or written.
    assert await reg.fetch("redis") == root
    assert contents(reg.folder) == ["archives", kept(release), "trees", *files]
    assert reg.fetcher.fetched == 1
    assert len(audit_lines(audit)) == 1

    # The trees removed (a cache cleared by hand): unpacked again from the kept archive, which is checked again,
    # with no download (the registry cannot be reached now).
    shutil.rmtree(reg.folder / "trees")
    reg.releases.access.lost("the connection to NATS was lost")
    assert await reg.fetch("redis") == root
    assert contents(reg.folder) == ["archives", kept(release), "trees", *files]
    assert tree_digest(root / "taskservs" / "redis" / "1.0.0") == release.tree_digest
    assert (reg.fetcher.fetched, reg.releases.refused) == (1, 0)
    assert len(audit_lines(audit)) == 1


async def test_a_kept_archive_whose_bytes_changed_on_disk_is_refused_removed_and_nothing_unpacked(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    sibling = await reg.publish("etcd")
    await reg.fetch("redis")
    await reg.fetch("etcd")
    shutil.rmtree(reg.fetcher.tree(release))
    forged = pack(checkout(reg.checkout / "forged", "redis"))
    (reg.folder / kept(release)).write_bytes(forged)

    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    reason = f"the kept archive's bytes are {digest_bytes(forged)}, not the signed {release.digest}"
    untrusted(caught, "redis", reason)
    # The archive is removed; nothing was unpacked; the other release is left as it was.
    assert contents(reg.folder) == [
        "archives",
        kept(sibling),
        "trees",
        *unpacked(sibling, "etcd", "1.0.0", "metadata.toml", "mod.nu"),
    ]
    assert (reg.fetcher.fetched, reg.releases.refused) == (2, 1)
    assert audit_lines(audit)[2:] == [refusal("taskserv:redis:1.0.0", "untrusted_extension", reason, release)]

    # The next fetch downloads the archive again, as signed.
    root = await reg.fetch("redis")
    assert tree_digest(root / "taskservs" / "redis" / "1.0.0") == release.tree_digest
    assert digest_file(reg.folder / kept(release)) == release.digest
    assert reg.fetcher.fetched == 3


async def test_a_tree_edited_on_disk_is_unpacked_again_from_the_kept_archive(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    root = await reg.fetch("redis")
    folder = root / "taskservs" / "redis" / "1.0.0"
    (folder / "mod.nu").write_text(EDITED)
    (folder / "extra.nu").write_text(EDITED)
    edited = tree_digest(folder)
    reg.releases.access.lost("the connection to NATS was lost")  # unpacked again with no download

    assert await reg.fetch("redis") == root
    assert tree_digest(folder) == release.tree_digest
    assert (folder / "mod.nu").read_text() == MODULE
    files = unpacked(release, "redis", "1.0.0", "metadata.toml", "mod.nu")
    assert contents(reg.folder) == ["archives", kept(release), "trees", *files]
    assert (reg.fetcher.fetched, reg.releases.refused) == (1, 0)
    again = line(
        "unpacked again", "taskserv:redis:1.0.0", "EDITED", f"its tree on disk was {edited}", release, signer=False
    )
    assert audit_lines(audit) == [fetched_line("taskserv:redis:1.0.0", release), again]


async def test_a_tree_edited_and_its_kept_archive_changed_are_both_removed(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    sibling = await reg.publish("etcd")
    root = await reg.fetch("redis")
    await reg.fetch("etcd")
    folder = root / "taskservs" / "redis" / "1.0.0"
    (folder / "mod.nu").write_text(EDITED)
    edited = tree_digest(folder)
    forged = pack(folder)
    (reg.folder / kept(release)).write_bytes(forged)

    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    reason = f"the kept archive's bytes are {digest_bytes(forged)}, not the signed {release.digest}"
    untrusted(caught, "redis", reason)
    # Neither is left, nor the empty folders that held the tree; the other release is as it was.
    assert contents(reg.folder) == [
        "archives",
        kept(sibling),
        "trees",
        *unpacked(sibling, "etcd", "1.0.0", "metadata.toml", "mod.nu"),
    ]
    again = line(
        "unpacked again", "taskserv:redis:1.0.0", "EDITED", f"its tree on disk was {edited}", release, signer=False
    )
    assert audit_lines(audit)[2:] == [again, refusal("taskserv:redis:1.0.0", "untrusted_extension", reason, release)]
    assert (reg.fetcher.fetched, reg.releases.refused) == (2, 1)


# --- refused or failed on the way from the bucket ------------------------------------------------------------


async def test_an_archive_replaced_in_the_bucket_is_refused_with_its_digest_and_nothing_kept(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    forged = pack(checkout(reg.checkout / "forged", "redis"))
    await reg.buckets.archives.put(release.object, forged)  # the bucket's own metadata agrees with the new bytes

    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    reason = f"its bytes are {digest_bytes(forged)}, not the signed {release.digest}"
    untrusted(caught, "redis", reason)
    assert contents(reg.folder) == ["archives"]  # no archive kept, no partial download (`.part`), no tree
    assert (reg.fetcher.fetched, reg.releases.refused) == (0, 1)
    assert audit_lines(audit) == [refusal("taskserv:redis:1.0.0", "untrusted_extension", reason, release)]


async def test_an_archive_over_the_limit_is_an_invalid_extension_and_nothing_is_kept(
    js_server: JetStreamServer, tmp_path: Path, audit: pytest.LogCaptureFixture
) -> None:
    async with registry_on(js_server.url, tmp_path, max_archive_mb=1) as reg:
        archive = os.urandom(2**20 + 1)
        release = await reg.publish_by_hand("big", archive)
        with pytest.raises(InvalidExtension) as caught:
            await reg.fetch("big")
        why = (
            f"archive {release.object!r} has {2**20 + 1} bytes or more, more than the {2**20} accepted: raise the "
            "limit, or do not load this release"
        )
        assert caught.value.details() == {
            "path": "registry:taskserv:big:1.0.0",
            "problems": [f"archive {release.digest}: {why}"],
        }
        assert contents(reg.folder) == ["archives"]
        assert (reg.fetcher.fetched, reg.releases.refused) == (0, 0)
        assert audit_lines(audit) == [refusal("taskserv:big:1.0.0", "invalid_extension", why, release)]


def tar_gz(members: dict[str, bytes]) -> bytes:
    """An archive made by hand, as no honest publisher makes one: its members named as given."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_signed_archive_that_is_not_safe_to_unpack_is_an_invalid_extension_and_leaves_no_tree(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    metadata = (checkout(reg.checkout, "hostile") / "metadata.toml").read_bytes()
    archive = tar_gz({"metadata.toml": metadata, "mod.nu": MODULE.encode(), "../escaped": b"planted"})
    release = await reg.publish_by_hand("hostile", archive)
    with pytest.raises(InvalidExtension) as caught:
        await reg.fetch("hostile")
    why = "../escaped: a name with a '..' part"
    assert caught.value.details() == {
        "path": "registry:taskserv:hostile:1.0.0",
        "problems": [f"archive {release.digest}: {why}"],
    }
    # The archive is the one signed, so it is kept; nothing of it is left under trees/, not even empty folders.
    refused_after_its_fetch(reg, audit, release, "taskserv:hostile:1.0.0", "invalid_extension", why)


# A loader that may read an object's metadata (a direct get) but not ask for its chunks: its requests for them go
# unanswered, as they would from a server that stopped answering in the middle of a fetch.
STALLING = """
authorization {
  users = [
    {user: publisher, password: publisher1}
    {user: loader, password: loader1, permissions: {publish: {deny: ["$JS.API.STREAM.MSG.GET.>"]}}}
  ]
}
"""


async def test_a_fetch_that_stalls_ends_within_the_registry_s_time_out(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(STALLING)
    server = JetStreamServer(tmp_path / "jetstream", ["-c", str(conf)]).start()
    try:
        users = {"publisher": {"user": "publisher", "password": "publisher1"}}
        users["loader"] = {"user": "loader", "password": "loader1"}
        # The loader's buckets wait WAIT for an answer; a fetch waits registry.timeout_s in all.
        async with registry_on(server.url, tmp_path, loader=users, timeout_s=0.5) as reg:
            release = await reg.publish("redis")
            with anyio.fail_after(WAIT / 4), pytest.raises(Unavailable) as caught:
                await reg.fetch("redis")
            assert caught.value.reason == (
                f"fetching taskserv:redis:1.0.0 from the registry failed: cannot read archive {release.object!r}: "
                "the server refused permission (nats: permissions violation for publish to "
                '"$js.api.stream.msg.get.obj_extension-archives"); give this user the registry\'s subjects for '
                "streams KV_extension-index and OBJ_extension-archives (README, Security)"
            )
            assert contents(reg.folder) == ["archives"]  # no partial download left
            assert (reg.fetcher.fetched, reg.releases.refused) == (0, 0)
    finally:
        server.stop()


async def test_a_release_never_fetched_is_unavailable_while_the_registry_cannot_be_reached(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    await reg.publish("redis")
    reg.releases.access.lost("the connection to NATS was lost")
    with pytest.raises(Unavailable) as caught:
        await reg.fetch("redis")
    assert caught.value.reason == (
        "the registry cannot be reached (the connection to NATS was lost), and taskserv:redis:1.0.0 was never "
        "fetched here"
    )
    # A loader whose follower never opened the buckets, nor said why.
    never = ReleaseFetcher(reg.config.registry, reg.folder, Trust(reg.config.registry.trusted), RegistryAccess())
    with pytest.raises(Unavailable) as caught:
        await never.fetch(reg.info("redis"), reg.releases._current(reg.info("redis")))
    assert caught.value.reason == (
        "the registry cannot be reached (not connected), and taskserv:redis:1.0.0 was never fetched here"
    )
    assert contents(reg.folder) == []
    assert (reg.fetcher.fetched, never.fetched, reg.releases.refused) == (0, 0, 0)
    assert audit_lines(audit) == []


async def test_an_archive_the_bucket_does_not_hold_is_unavailable_and_at_an_edge_site_says_the_mirrors_may_trail(
    reg: Registry,
) -> None:
    """The index names an archive its bucket does not hold: at the hub a deleted object, said so; at an edge site
    (the buckets are mirrors) more likely one the archive mirror has not copied yet, and the reason says that too."""
    release = await reg.publish("redis")
    await reg.buckets.archives.delete(release.object)
    missing = (
        f"fetching taskserv:redis:1.0.0 from the registry failed: archive {release.object!r} is not in bucket "
        "'extension-archives': the index names an object that was deleted; publish the release again"
    )
    with pytest.raises(Unavailable) as caught:
        await reg.fetch("redis")
    assert caught.value.reason == missing
    heard = datetime.now(UTC)
    reg.releases.access.saw_mirrors(
        (
            MirrorReading("KV_extension-index", 1, heard, lag=0, heard_ago_s=0.5, error=None),
            MirrorReading("OBJ_extension-archives", 1, heard, lag=1, heard_ago_s=0.5, error=None),
        )
    )
    with pytest.raises(Unavailable) as caught:
        await reg.fetch("redis")
    assert caught.value.reason == (
        f"{missing}; at this edge site, more likely its mirrors do not hold it yet (they catch up on their own)"
    )
    assert contents(reg.folder) == ["archives"]  # no partial download left
    assert (reg.fetcher.fetched, reg.releases.refused) == (0, 0)


# --- refused once unpacked: what the signed statement says, and what the index says ----------------------------


async def test_an_archive_whose_unpacked_tree_is_not_the_signed_one_is_refused_and_leaves_no_tree(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    folder = checkout(reg.checkout, "redis")
    signed_tree = "sha256:" + "cd" * 32
    release = await reg.publish_by_hand("redis", pack(folder), tree_digest=signed_tree)
    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    reason = f"its unpacked tree is {tree_digest(folder)}, not the signed {signed_tree}"
    untrusted(caught, "redis", reason)
    refused_after_its_fetch(reg, audit, release, "taskserv:redis:1.0.0", "untrusted_extension", reason)


async def test_a_record_changed_while_loading_is_refused_and_nothing_fetched(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    await reg.publish("redis")
    chosen = reg.info("redis")
    # A holder of the key indexes other bytes as the same version, after the load chose it.
    folder = checkout(reg.checkout, "redis")
    other = await reg.publish_by_hand("redis", pack(folder), tree_digest=tree_digest(folder))
    reason = "its index entry changed while it was being loaded; try again"
    with pytest.raises(UntrustedExtension) as caught:
        await reg.releases.fetch(chosen)
    untrusted(caught, "redis", reason)
    assert contents(reg.folder) == []
    assert (reg.fetcher.fetched, reg.releases.refused) == (0, 1)
    assert audit_lines(audit) == [refusal("taskserv:redis:1.0.0", "untrusted_extension", reason, other)]


async def test_the_same_archive_under_a_signature_no_longer_trusted_is_refused(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    chosen = reg.info("redis")
    assert release.statement is not None
    statement = read(release.statement, ReleaseStatement)
    # The record now holds the same archive, under a release statement signed by a key this loader does not trust.
    forged = signed.release(OTHER, statement)
    reg.releases.apply(index_key(T, "redis"), signed.value(signed.record(KEY, [forged], sequence=2)))
    assert reg.fetcher.tree(forged) / "taskservs" / "redis" / "1.0.0" == chosen.path
    reason = "its index entry changed while it was being loaded; try again"
    with pytest.raises(UntrustedExtension) as caught:
        await reg.releases.fetch(chosen)
    assert caught.value.details() == {
        "extension_type": "taskserv",
        "name": "redis",
        "version": "1.0.0",
        "reason": reason,
        "signer": OTHER.public_key,
    }
    assert contents(reg.folder) == []
    assert (reg.fetcher.fetched, reg.releases.refused) == (0, 1)
    assert audit_lines(audit) == [refusal("taskserv:redis:1.0.0", "untrusted_extension", reason, forged)]


@pytest.mark.parametrize(
    ("written", "description", "differ"),
    [
        pytest.param('"taskserv:postgres@^16"', "redis 1.0.0", "dependencies differ", id="dependencies"),
        pytest.param('"postgres@^16"', "redis 1.0.0", None, id="untyped-dependencies-agree"),
        pytest.param('"postgres@^16"', "another description", "description differ", id="description"),
        pytest.param(
            '"postgres@^15"', "another description", "description, dependencies differ", id="description-dependencies"
        ),
    ],
)
async def test_a_metadata_toml_that_says_otherwise_than_the_signed_statement_is_refused(
    reg: Registry, audit: pytest.LogCaptureFixture, written: str, description: str, differ: str | None
) -> None:
    folder = checkout(reg.checkout, "redis", description=description, dependencies=written)
    archive = pack(folder)
    # Signed: the description `redis 1.0.0`, and the dependency as a publish types it.
    release = await reg.publish_by_hand(
        "redis", archive, tree_digest=tree_digest(folder), dependencies=["provider:postgres@^16"]
    )
    if differ is None:
        root = await reg.fetch("redis")
        assert tree_digest(root / "taskservs" / "redis" / "1.0.0") == release.tree_digest
        assert audit_lines(audit) == [fetched_line("taskserv:redis:1.0.0", release)]
        return
    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    reason = f"its index entry does not say what its signed archive says: {differ}"
    untrusted(caught, "redis", reason)
    refused_after_its_fetch(reg, audit, release, "taskserv:redis:1.0.0", "untrusted_extension", reason)


async def test_an_archive_without_metadata_toml_is_refused_with_why(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    folder = checkout(reg.checkout, "redis")
    (folder / "metadata.toml").unlink()
    release = await reg.publish_by_hand("redis", pack(folder), tree_digest=tree_digest(folder))
    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    unpacked_at = reg.fetcher.tree(release) / "taskservs" / "redis" / "1.0.0" / "metadata.toml"
    problem = f"metadata.toml: cannot read: [Errno 2] No such file or directory: '{unpacked_at}'"
    untrusted(caught, "redis", f"its index entry does not say what its signed archive says: {problem}")
    assert contents(reg.folder) == ["archives", kept(release), "trees"]


async def test_an_archive_whose_metadata_toml_names_another_version_is_refused_with_each_problem(
    reg: Registry,
) -> None:
    metadata = 'name = "etcd"\nversion = "1.0.1"\ndescription = "redis 1.0.0"\ntype = "taskserv"\n'
    folder = write_extension(reg.checkout, "taskserv", "redis", "1.0.0", metadata=metadata)
    release = await reg.publish_by_hand("redis", pack(folder), tree_digest=tree_digest(folder))
    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    problems = [
        "metadata.toml: name is 'etcd', but the folder is 'redis'",
        "metadata.toml: version is '1.0.1', but the folder is '1.0.0'",
    ]
    untrusted(caught, "redis", f"its index entry does not say what its signed archive says: {'; '.join(problems)}")
    assert contents(reg.folder) == ["archives", kept(release), "trees"]


async def test_an_index_entry_without_metadata_differs_in_every_field_the_archive_gives(reg: Registry) -> None:
    release = await reg.publish("redis")
    info = reg.info("redis")
    bare = VersionInfo(T, "redis", "1.0.0", info.path, None, source="registry", signer=info.signer)
    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetcher.fetch(bare, release)
    assert caught.value.reason == (
        "its index entry does not say what its signed archive says: name, version, description, extension_type differ"
    )
    assert contents(reg.folder) == ["archives", kept(release), "trees"]


async def test_a_dependency_published_without_its_type_loads_as_signed_with_it(reg: Registry) -> None:
    release = await reg.publish("redis", dependencies=["postgres@^16", "taskserv:etcd"])
    assert release.dependencies == ("taskserv:postgres@^16", "taskserv:etcd")
    root = await reg.fetch("redis")
    assert tree_digest(root / "taskservs" / "redis" / "1.0.0") == release.tree_digest


@pytest.mark.parametrize(
    ("written", "signed_as", "same"),
    [
        pytest.param([], [], True, id="none"),
        pytest.param(["postgres@^16"], ["taskserv:postgres@^16"], True, id="untyped-typed"),
        pytest.param(["postgres"], ["taskserv:postgres"], True, id="untyped-no-constraint"),
        pytest.param(["postgres@^16"], ["provider:postgres@^16"], True, id="untyped-any-type"),
        pytest.param(["taskserv:postgres@^16"], ["taskserv:postgres@^16"], True, id="typed"),
        pytest.param(["taskserv:postgres@^16"], ["provider:postgres@^16"], False, id="another-type"),
        pytest.param(["postgres@^16"], ["taskserv:redis@^16"], False, id="another-name"),
        pytest.param(["postgres@^16"], ["taskserv:postgres@^15"], False, id="another-constraint"),
        pytest.param(["postgres@^16"], ["taskserv:postgres"], False, id="no-constraint-signed"),
        pytest.param(["postgres"], ["postgres@^16"], False, id="no-constraint-written"),
        pytest.param(["taskserv:postgres"], ["postgres"], False, id="typed-written-untyped-signed"),
        pytest.param(["a", "b"], ["taskserv:a"], False, id="more-written"),
        pytest.param(["a"], ["taskserv:a", "taskserv:b"], False, id="more-signed"),
        pytest.param(["b", "a"], ["taskserv:a", "taskserv:b"], False, id="another-order"),
        pytest.param(["a", "b"], ["taskserv:a", "taskserv:c"], False, id="second-differs"),
        # The type is what comes before a colon in the part before the `@`: a colon after it names no type.
        pytest.param(["postgres@a:b"], ["taskserv:postgres@a:b"], True, id="colon-in-constraint"),
    ],
)
def test_dependencies_written_are_the_signed_ones_where_a_type_left_out_may_be_any(
    written: list[str], signed_as: list[str], same: bool
) -> None:
    assert _same_dependencies(written, signed_as) is same


# --- overlapping fetches, and archives small and large ----------------------------------------------------------


async def fetch_together(*fetches: Any) -> list[Path]:
    """Runs the fetches at once (each a function of no arguments), bounded; their roots in order."""
    roots: list[Path | None] = [None] * len(fetches)

    async def one(i: int) -> None:
        roots[i] = await fetches[i]()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for i in range(len(fetches)):
                tg.start_soon(one, i)
    return [r for r in roots if r is not None]


async def test_overlapping_fetches_of_one_archive_download_it_once(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    release = await reg.publish("redis")
    root = reg.fetcher.tree(release)
    assert await fetch_together(*[lambda: reg.fetch("redis")] * 3) == [root] * 3
    files = unpacked(release, "redis", "1.0.0", "metadata.toml", "mod.nu")
    assert contents(reg.folder) == ["archives", kept(release), "trees", *files]
    assert reg.fetcher.fetched == 1
    assert audit_lines(audit) == [fetched_line("taskserv:redis:1.0.0", release)]

    # A tree edited on disk, fetched by overlapping loads: unpacked again once.
    (root / "taskservs" / "redis" / "1.0.0" / "mod.nu").write_text(EDITED)
    assert await fetch_together(*[lambda: reg.fetch("redis")] * 3) == [root] * 3
    assert tree_digest(root / "taskservs" / "redis" / "1.0.0") == release.tree_digest
    assert [text.split(":")[0] for text, _ in audit_lines(audit)] == ["fetched taskserv", "unpacked again taskserv"]


async def test_overlapping_fetches_of_a_release_refused_once_unpacked_are_each_refused_alike(
    reg: Registry, audit: pytest.LogCaptureFixture
) -> None:
    folder = checkout(reg.checkout, "redis", description="another description")
    release = await reg.publish_by_hand("redis", pack(folder), tree_digest=tree_digest(folder))
    reason = "its index entry does not say what its signed archive says: description differ"
    refusals: list[str] = []

    async def refused() -> Path:
        with pytest.raises(UntrustedExtension) as caught:
            await reg.fetch("redis")
        refusals.append(caught.value.reason)
        return reg.fetcher.tree(release)

    await fetch_together(refused, refused, refused)
    assert refusals == [reason] * 3  # never a tree half removed by the other, nor a file missing from it
    refused_after_its_fetch(reg, audit, release, "taskserv:redis:1.0.0", "untrusted_extension", reason, refused=3)


async def test_a_fetch_waiting_on_the_registry_holds_up_no_fetch_of_another_archive(
    reg: Registry, js_server: JetStreamServer
) -> None:
    served = await reg.publish("etcd")
    await reg.fetch("etcd")
    await reg.publish("redis")
    js_server.pause()  # nothing answers: the fetch of redis waits, holding its archive's turn
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reg.fetch, "redis")
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(WAIT / 4):
                assert await reg.fetch("etcd") == reg.fetcher.tree(served)
            tg.cancel_scope.cancel()
    finally:
        js_server.resume()


async def test_two_loaders_sharing_a_folder_fetch_at_once_and_serve_one_tree(reg: Registry) -> None:
    release = await reg.publish("redis")
    config = reg.config.registry
    other = ReleaseFetcher(config, reg.folder, Trust(config.trusted), reg.releases.access)
    info = reg.info("redis")
    roots = await fetch_together(lambda: reg.fetcher.fetch(info, release), lambda: other.fetch(info, release))
    assert roots == [reg.fetcher.tree(release)] * 2
    files = unpacked(release, "redis", "1.0.0", "metadata.toml", "mod.nu")
    assert contents(reg.folder) == ["archives", kept(release), "trees", *files]  # no partial download left
    assert tree_digest(roots[0] / "taskservs" / "redis" / "1.0.0") == release.tree_digest
    assert (reg.fetcher.fetched, other.fetched) == (1, 1)


@pytest.mark.parametrize("size", [pytest.param(1024, id="small"), pytest.param(96 * 1024, id="large")])
async def test_an_archive_small_or_large_is_unpacked_checked_and_unpacked_again_alike(
    reg: Registry, audit: pytest.LogCaptureFixture, size: int
) -> None:
    folder = checkout(reg.checkout, "redis")
    (folder / "data.bin").write_bytes(random.Random(size).randbytes(size))  # incompressible
    archive = pack(folder)
    assert (len(archive) <= SMALL) is (size < SMALL)
    release = await reg.publish_by_hand("redis", archive, tree_digest=tree_digest(folder))
    root = await reg.fetch("redis")
    unpacked_at = root / "taskservs" / "redis" / "1.0.0"
    assert tree_digest(unpacked_at) == release.tree_digest
    assert (unpacked_at / "data.bin").read_bytes() == (folder / "data.bin").read_bytes()

    (unpacked_at / "data.bin").write_bytes(b"edited")
    edited = tree_digest(unpacked_at)
    assert await reg.fetch("redis") == root
    assert tree_digest(unpacked_at) == release.tree_digest

    (unpacked_at / "data.bin").write_bytes(b"edited")
    forged = pack(unpacked_at)
    (reg.folder / kept(release)).write_bytes(forged)
    with pytest.raises(UntrustedExtension) as caught:
        await reg.fetch("redis")
    reason = f"the kept archive's bytes are {digest_bytes(forged)}, not the signed {release.digest}"
    untrusted(caught, "redis", reason)
    assert contents(reg.folder) == ["archives", "trees"]
    again = line(
        "unpacked again", "taskserv:redis:1.0.0", "EDITED", f"its tree on disk was {edited}", release, signer=False
    )
    assert audit_lines(audit) == [
        fetched_line("taskserv:redis:1.0.0", release),
        again,
        again,
        refusal("taskserv:redis:1.0.0", "untrusted_extension", reason, release),
    ]
