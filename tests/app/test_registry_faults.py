"""The registry's faults end to end, on a real nats-server with JetStream and real Nushell: bytes replaced in the
archive bucket, signatures swapped or removed in the index, keys trusted for other extensions, hostile archives
signed by a trusted key, a publish cut off half way, NATS lost in the middle of a fetch, buckets that do not
exist yet when a loader starts, and a publish right after the server restarts. In each the loader refuses what
it must, leaves nothing half done on disk, and serves on.

Every wait is on an event or a condition, bounded; nothing sleeps.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import nats
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.app.publishing import prepare, publish
from service.contract.config import Config
from service.contract.errors import LoaderError
from service.contract.messages import ExtensionType
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.errors import RegistryUnavailable
from service.registry.index import Release, decode_record, encode_record, index_key
from service.registry.signing import Signer
from service.wire.service import ExtensionService, flush_subscriptions
from tests.conftest import (
    WAIT,
    EventLog,
    JetStreamServer,
    make_config,
    publish_folder,
    registry_settings,
    running_service,
    set_up_streams,
    write_extension,
)
from tests.registry import signed

pytestmark = pytest.mark.anyio
T = ExtensionType.TASKSERV
MiB = 1024 * 1024


def source(root: Path, name: str, version: str, *, kind: str = "taskserv", module: str | None = None) -> Path:
    """An extension folder outside any loader's roots: what a publisher has in its checkout."""
    if module is None:
        return write_extension(root / "checkout", kind, name, version)
    return write_extension(root / "checkout", kind, name, version, module=module)


def loader_config(url: str, tmp_path: Path, **registry: Any) -> Config:
    """A loader with no extension tree of its own: everything it loads comes from the registry."""
    return make_config(url, tmp_path, roots=[tmp_path / "no-tree"], overrides=registry_settings(**registry))


def contents(folder: Path) -> list[str]:
    """Everything under a folder (files, folders, links), relative to it; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def left_of(service: ExtensionService, release: Release) -> list[str]:
    """What the loader's registry folder holds of one release: its tree, its kept archive, a partial download."""
    registry = service.config.cache_dir / ".registry"
    hexdigest = release.digest.removeprefix("sha256:")
    trees = [f"trees/{p}" for p in contents(registry / "trees") if p.split("/")[0] == hexdigest]
    archives = [f"archives/{p}" for p in contents(registry / "archives") if hexdigest in p or p.endswith(".part")]
    return trees + archives


def refusals(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(extension, outcome) of each audit line that says something was refused."""
    lines = [r.__dict__ for r in caplog.records if r.name == "service.audit"]
    return [(line["extension"], line["outcome"]) for line in lines if line.get("action") == "refused"]


async def dangling(buckets: RegistryBuckets) -> list[str]:
    """Every release of every index record whose archive is not in the archive bucket."""
    missing = []
    for entry in await buckets.index.entries():
        assert entry.value is not None
        record = decode_record(entry.value)
        for release in record.releases.values():
            if await buckets.archives.info(release.object) is None:
                missing.append(f"{entry.key} {release.version} -> {release.object}")
    return missing


async def wait_until_known(service: ExtensionService, name: str, version: str) -> None:
    """Until the loader's follower has read `version` of `name` from the index."""
    follower, releases = service.follower, service.manager.releases
    assert follower is not None and releases is not None
    with anyio.fail_after(WAIT):
        while version not in releases.versions(T, name):
            await follower.wait_updates(follower.updates + 1)


async def wait_until_reachable(service: ExtensionService) -> None:
    follower, releases = service.follower, service.manager.releases
    assert follower is not None and releases is not None
    with anyio.fail_after(WAIT):
        while not releases.access.reachable:
            await follower.wait_updates(follower.updates + 1)


@asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Client]:
    nc = await nats.connect(url, allow_reconnect=False, **options)
    try:
        yield nc
    finally:
        await nc.close()


# --- what was written under the loader's feet ---------------------------------------------------------------


async def test_an_archive_whose_bytes_were_replaced_in_the_bucket_is_refused_and_nothing_of_it_kept(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    config = loader_config(nats_server.url, tmp_path, trusted=[{"key": signer.public_key}])
    await publish_folder(nc, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
    target = await publish_folder(nc, source(tmp_path / "2", "etcd", "3.6.0"), signer, config)
    # Whoever may write the bucket puts other bytes under the object's name: an extension that would load, with
    # the same name and version, and the bucket's own metadata (size, digest) agreeing with the new bytes. Only
    # the digest the publisher signed tells them apart.
    other = source(tmp_path / "forged", "etcd", "3.6.0", module="export def check [] { {ok: false} }\n")
    forged = pack(other)
    archives = await nc.jetstream().object_store("extension-archives")
    await archives.put(target.object, forged)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    assert await buckets.archives.info(target.object) == (len(forged), digest_bytes(forged))

    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        for _ in range(2):  # refused each time: nothing of the first attempt is kept to skip the check
            with pytest.raises(RemoteError) as caught:
                await client.load("taskserv", "etcd", "3.6.0")
            assert caught.value.code == "untrusted_extension"
            reason = caught.value.details["reason"]
            assert f"its bytes are {digest_bytes(forged)}, not the signed {target.digest}" in reason
            assert caught.value.details["signer"] == signer.public_key
            assert left_of(service, target) == []  # no tree, no kept archive, no partial download
        assert refusals(caplog) == [("taskserv:etcd:3.6.0", "untrusted_extension")] * 2
        assert (await client.stats())["registry"]["refused"] == 2
        # The service serves on: the other version, whose bytes are as signed, loads.
        assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"


async def test_a_release_whose_signature_was_swapped_or_removed_in_the_index_is_refused(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    config = loader_config(nats_server.url, tmp_path, trusted=[{"key": signer.public_key}])
    older = await publish_folder(nc, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
    newer = await publish_folder(nc, source(tmp_path / "2", "etcd", "3.6.0"), signer, config)
    unsigned = await publish_folder(nc, source(tmp_path / "3", "redis", "7.0.0"), signer, config)
    index = await nc.jetstream().key_value("extension-index")
    assert older.statement is not None and newer.statement is not None and unsigned.statement is not None
    forgeries = {
        # A real signature by the trusted key, of another release: it must not carry over.
        ("etcd", "3.6.0"): msgspec.structs.replace(
            newer, statement=msgspec.structs.replace(newer.statement, signatures=older.statement.signatures)
        ),
        ("redis", "7.0.0"): msgspec.structs.replace(
            unsigned, statement=msgspec.structs.replace(unsigned.statement, signatures=())
        ),
    }
    for (name, version), forged in forgeries.items():
        key = index_key(T, name)
        record = decode_record((await index.get(key)).value or b"")
        await index.put(
            key, encode_record(msgspec.structs.replace(record, releases={**record.releases, version: forged}))
        )

    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        for (name, version), forged in forgeries.items():
            with pytest.raises(RemoteError) as caught:
                await client.load("taskserv", name, version)
            assert caught.value.code == "untrusted_extension"
            assert caught.value.details["reason"] == "its signature does not verify"
            assert left_of(service, forged) == []
        assert refusals(caplog) == [
            ("taskserv:etcd:3.6.0", "untrusted_extension"),
            ("taskserv:redis:7.0.0", "untrusted_extension"),
        ]
        # The signed state lists 3.6.0: a constraint whose best version it is gets its refusal, never the older
        # 3.5.0 in its place (which would let whoever breaks a signature roll loaders back); 3.5.0 loads when asked.
        with pytest.raises(RemoteError) as caught:
            await client.load("taskserv", "etcd")
        assert caught.value.details["version"] == "3.6.0"
        assert caught.value.details["reason"] == "its signature does not verify"
        assert (await client.load("taskserv", "etcd", "<3.6.0"))["metadata"]["version"] == "3.5.0"
        (etcd,) = await client.discover("taskserv", "etcd")
        assert {s["version"]: s["trusted"] for s in etcd["sources"]} == {"3.6.0": False, "3.5.0": True}


@pytest.mark.parametrize(
    ("limit", "allowed", "named"),
    [
        ({"names": ["other"]}, ("taskserv", "other"), "only for names other"),
        ({"types": ["provider"]}, ("provider", "other"), "only for types provider"),
    ],
    ids=["names", "types"],
)
async def test_a_key_trusted_only_for_other_extensions_is_refused_with_its_limit_named(
    nats_server: NatsServer,
    nc: Client,
    tmp_path: Path,
    signer: Signer,
    limit: dict[str, list[str]],
    allowed: tuple[str, str],
    named: str,
) -> None:
    config = loader_config(nats_server.url, tmp_path, trusted=[{"key": signer.public_key, **limit}])
    etcd = await publish_folder(nc, source(tmp_path / "1", "etcd", "3.6.0"), signer, config)
    await publish_folder(nc, source(tmp_path / "2", allowed[1], "1.0.0", kind=allowed[0]), signer, config)
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        with pytest.raises(RemoteError) as caught:
            await client.load("taskserv", "etcd", "3.6.0")
        assert caught.value.code == "untrusted_extension"
        reason = caught.value.details["reason"]
        assert named in reason and "not for taskserv etcd" in reason
        assert left_of(service, etcd) == []
        # What the key is trusted for loads.
        assert (await client.load(*allowed))["metadata"]["name"] == allowed[1]


# --- hostile archives signed by a trusted key ---------------------------------------------------------------


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def tar_gz(members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """An archive made by hand, member by member, as no honest publisher would make it."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def hostile(case: str, tmp_path: Path, cache_dir: Path) -> bytes:
    """A working extension `hostile` 1.0.0, with one thing added that a loader must not unpack."""
    metadata = b'name = "hostile"\nversion = "1.0.0"\ndescription = "hostile"\ntype = "taskserv"\n'
    module = b"export def check [] { {ok: true} }\n"
    good = [(member("metadata.toml", metadata), metadata), (member("mod.nu", module), module)]
    if case == "parent":
        # Unpacked in cache_dir/.registry/trees/<hex>/taskservs/hostile/.<temporary>: this climbs to tmp_path.
        depth = len(cache_dir.relative_to(tmp_path).parts) + 6
        bad = [(member("../" * depth + "escaped", b"planted"), b"planted")]
    elif case == "absolute":
        bad = [(member(str(tmp_path / "escaped"), b"planted"), b"planted")]
    elif case == "symlink":
        bad = [
            (member("link", kind=tarfile.SYMTYPE, link=str(tmp_path / "outside")), b""),
            (member("link/escaped", b"planted"), b"planted"),
        ]
    elif case == "too large":
        zeros = bytes(2 * MiB)  # compresses to a few KiB
        bad = [(member("zeros", zeros), zeros)]
    else:
        assert case == "too many"
        bad = [(member(f"file{i:02}", b"x"), b"x") for i in range(12)]
    return tar_gz([*good, *bad])


async def publish_by_hand(nc: Client, signer: Signer, name: str, version: str, archive: bytes) -> Release:
    """Stores an archive and indexes it as a release signed by `signer`, with its true digest: what a publisher
    holding a trusted key could write without going through `publish`'s checks."""
    digest = digest_bytes(archive)
    # The tree digest is never reached: the archive is refused before its tree is digested.
    release = signed.release(
        signer, signed.statement(name, version, digest=digest, tree_digest=digest, size=len(archive))
    )
    await set_up_streams(nc)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    key = index_key(T, name)
    value, revision = await buckets.index.get(key)
    record = signed.extended(decode_record(value) if value is not None else None, signer, release, kind=T, name=name)
    await buckets.archives.put(release.object, archive)
    await buckets.index.put(key, encode_record(record), revision)
    return release


def outside(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [p for p in contents(tmp_path) if not (tmp_path / p).is_relative_to(cache_dir)]


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("parent", "a name with a '..' part"),
        ("absolute", "an absolute name"),
        ("symlink", "link: a symbolic link"),
        ("too large", "the files add up to more than the limit of 1048576 bytes"),
        ("too many", "more than 10 members"),
    ],
)
async def test_a_hostile_archive_signed_by_a_trusted_key_is_refused_and_writes_nothing_outside_the_cache(
    nats_server: NatsServer,
    nc: Client,
    tmp_path: Path,
    signer: Signer,
    caplog: pytest.LogCaptureFixture,
    case: str,
    why: str,
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    config = loader_config(
        nats_server.url, tmp_path, trusted=[{"key": signer.public_key}], max_unpacked_mb=1, max_files=10
    )
    (tmp_path / "outside").mkdir()  # where the link points: a folder that is there to be written into
    release = await publish_by_hand(nc, signer, "hostile", "1.0.0", hostile(case, tmp_path, config.cache_dir))
    await publish_folder(nc, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)

    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        before = outside(tmp_path, config.cache_dir)
        with pytest.raises(RemoteError) as caught:
            await client.load("taskserv", "hostile", "1.0.0")
        assert caught.value.code == "invalid_extension"
        (problem,) = caught.value.details["problems"]
        assert problem.startswith(f"archive {release.digest}: ") and why in problem
        assert outside(tmp_path, config.cache_dir) == before  # nothing written outside the cache folder
        assert not (tmp_path / "escaped").exists()
        assert contents(tmp_path / "outside") == []
        assert not [p for p in contents(tmp_path) if p.endswith("escaped")]
        assert not [p for p in left_of(service, release) if p.startswith("trees/")]  # no tree, whole or half
        assert refusals(caplog) == [("taskserv:hostile:1.0.0", "invalid_extension")]
        # The service serves on.
        assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"


# --- a publish cut off half way -----------------------------------------------------------------------------

CUT_OFF = """
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{user: admin, password: admin1}}
    {{user: "no-index", password: cut1, permissions: {{publish: {{deny: ["$KV.extension-index.>"]}}}}}}
    {{user: "no-archive", password: cut1, permissions: {{publish: {{deny: ["$O.extension-archives.C.>"]}}}}}}
  ]
}}
"""


async def _quiet(exc: Exception) -> None:
    pass  # the refused writes are what the test is about


@pytest.mark.parametrize("cut", ["after the archive", "index write refused", "archive write refused"])
async def test_a_publish_cut_off_half_way_indexes_nothing_missing_and_the_next_publish_completes_it(
    tmp_path: Path, signer: Signer, cut: str
) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(CUT_OFF.format(store=tmp_path / "jetstream"))
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        config = make_config(
            server.url,
            tmp_path,
            roots=[tmp_path / "no-tree"],
            overrides={
                **registry_settings(signer.public_key),
                "nats.user": "admin",
                "nats.password": "admin1",
            },
        )
        async with connected(server.url, user="admin", password="admin1") as admin:
            await publish_folder(admin, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
            folder = source(tmp_path / "2", "redis", "7.0.0")
            prepared = await prepare(folder, signer, config)
            buckets = RegistryBuckets(admin)
            await buckets.open()
            if cut == "after the archive":
                await buckets.archives.put(prepared.release.object, prepared.archive)  # and the publisher is gone
            else:
                # The real publish, cut off by the server refusing one of its writes.
                user = "no-index" if cut == "index write refused" else "no-archive"
                async with connected(server.url, user=user, password="cut1", error_cb=_quiet) as cut_nc:
                    cut_buckets = RegistryBuckets(cut_nc, timeout_s=1.0)
                    await cut_buckets.open()
                    with anyio.fail_after(WAIT), pytest.raises(RegistryUnavailable, match="refused permission"):
                        await publish(cut_buckets, prepared)
            stored = await buckets.archives.info(prepared.release.object)
            assert (stored is not None) == (cut != "archive write refused")
            assert await dangling(buckets) == []  # no index entry points at an object that is not there

            async with running_service(config) as service:
                client = LoaderClient(admin, timeout=WAIT)
                assert [a["name"] for a in await client.discover("taskserv")] == ["etcd"]
                with pytest.raises(RemoteError) as caught:
                    await client.load("taskserv", "redis", "7.0.0")
                assert caught.value.code == "not_found"
                # Published again, whole: the archive left behind, if any, is the one the index now names.
                again = await publish_folder(admin, folder, signer, config)
                assert again.object == prepared.release.object
                assert await dangling(buckets) == []
                await wait_until_known(service, "redis", "7.0.0")
                loaded = await client.load("taskserv", "redis", "7.0.0")
                assert loaded["digest"] == again.tree_digest


# --- NATS and JetStream coming and going --------------------------------------------------------------------


def partial_downloads(service: ExtensionService) -> list[int]:
    """The sizes of the partial downloads (".part" files) in the loader's archives folder."""
    archives = service.config.cache_dir / ".registry" / "archives"
    return [p.stat().st_size for p in archives.glob("*.part")] if archives.is_dir() else []


async def test_a_fetch_cut_off_by_nats_going_away_fails_leaving_nothing_and_works_once_it_is_back(
    js_server: JetStreamServer, tmp_path: Path, signer: Signer
) -> None:
    config = loader_config(js_server.url, tmp_path, trusted=[{"key": signer.public_key}], max_archive_mb=64)
    folder = source(tmp_path, "bulky", "1.0.0")
    (folder / "payload.bin").write_bytes(os.urandom(20 * MiB))  # incompressible: 40 chunks, three pulls
    async with connected(js_server.url) as publisher:
        release = await publish_folder(publisher, folder, signer, config)

    async with running_service(config) as service:
        failures: list[LoaderError] = []

        async def load() -> None:
            try:
                await service.manager.load(T, "bulky", "1.0.0")
            except LoaderError as exc:
                failures.append(exc)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                # The fetch runs in this event loop: looking at each of its turns sees the first chunk written
                # before the service has asked for the next window of chunks, so the server stops mid-fetch.
                while not any(partial_downloads(service)):
                    await anyio.lowlevel.checkpoint()
                js_server.pause()
                (written,) = partial_downloads(service)
                assert 0 < written < release.size
                js_server.kill()
        (error,) = failures
        assert error.code == "unavailable"
        assert "connection to NATS was lost" in error.message
        assert left_of(service, release) == []  # no partial archive, no archive kept, no tree

        js_server.stop()  # reaps the killed one
        js_server.start()  # the same port and store
        with anyio.fail_after(WAIT):
            await service.wait_until(reconnects=1)
        await wait_until_reachable(service)
        async with connected(js_server.url) as nc:
            loaded = await LoaderClient(nc, timeout=WAIT).load("taskserv", "bulky", "1.0.0")
        assert loaded["digest"] == release.tree_digest
        assert [p for p in left_of(service, release) if p.endswith(".part")] == []


async def test_a_loader_started_before_the_buckets_exist_says_why_and_follows_them_once_published(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    config = loader_config(nats_server.url, tmp_path, trusted=[{"key": signer.public_key}])
    starting = anyio.current_time()
    async with running_service(config) as service:
        assert anyio.current_time() - starting < 10  # each index call is bounded by 5 s: no start waits for buckets
        client = LoaderClient(nc, timeout=WAIT)
        registry = (await client.stats())["registry"]
        assert registry["reachable"] is False
        assert registry["last_error"] == (
            "the index (Key-Value bucket 'extension-index') and the archives (Object Store bucket "
            "'extension-archives') of the registry are not on this server: run `extension-loader setup` (as admin) "
            "to create the registry's buckets, or check the bucket names in the configuration"
        )

        release = await publish_folder(nc, source(tmp_path, "etcd", "3.6.0"), signer, config)
        await wait_until_known(service, "etcd", "3.6.0")  # tried again every 5 s
        registry = (await client.stats())["registry"]
        assert (registry["reachable"], registry["last_error"], registry["versions"]) == (True, None, 1)
        loaded = await client.load("taskserv", "etcd", "3.6.0")
        assert loaded["digest"] == release.tree_digest


async def test_a_publish_right_after_the_server_restarts_is_loaded_without_waiting_for_heartbeats(
    js_server: JetStreamServer, tmp_path: Path, signer: Signer
) -> None:
    config = loader_config(js_server.url, tmp_path, trusted=[{"key": signer.public_key}], auto_update=True)
    async with connected(js_server.url) as publisher:
        await publish_folder(publisher, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
    newer = await prepare(source(tmp_path / "2", "etcd", "3.6.0"), signer, config)

    async with running_service(config) as service:
        js_server.stop()
        js_server.start()  # the same port and store
        with anyio.fail_after(WAIT):
            await service.wait_until(reconnects=1)
        async with connected(js_server.url) as nc:
            events = EventLog()
            await nc.subscribe("extensions.loaded", cb=events.add)
            await flush_subscriptions(nc)
            buckets = RegistryBuckets(nc)
            await buckets.open()
            await publish(buckets, newer)
            # nats-py's ordered consumer, left to itself, resumes the watch ~12 s after the reconnect (its missed
            # heartbeats); the follower starts a new watch at once, which sees the publish whether it comes
            # before that watch (in the index read first) or after (as a change).
            with anyio.fail_after(8):
                (loaded,) = await events.wait_for(1)
        assert loaded["reason"] == "published"
        assert loaded["extension"]["metadata"]["version"] == "3.6.0"


async def test_a_version_published_while_a_loader_was_down_is_loaded_when_it_starts_again(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, events: EventLog
) -> None:
    config = loader_config(nats_server.url, tmp_path, trusted=[{"key": signer.public_key}], auto_update=True)
    await publish_folder(nc, source(tmp_path / "1", "etcd", "3.5.0"), signer, config)
    async with running_service(config):
        pass  # it has read the index once, and saved it
    await publish_folder(nc, source(tmp_path / "2", "etcd", "3.6.0"), signer, config)
    # Its first reading of the index after the start holds a version it has not seen: auto_update fetches it
    # from the registry it is reading, which must count as reachable by then.
    async with running_service(config):
        (loaded,) = await events.wait_for(1, ".loaded")
        assert loaded["reason"] == "published"
        assert loaded["extension"]["metadata"]["version"] == "3.6.0"
