"""`extension-loader bundle export` and `bundle import` as a person runs them, between two real JetStream
nats-servers: a registry and an air-gapped site, with the real Nushell loader behind every publish and every load.

The bundle is reproducible (the same registry content, the same bytes); an import verifies everything with the
site's pinned keys before it writes anything, refuses a tampered bundle or one that would take a record back, and
changes nothing the second time; loaders at the site serve what was imported as if it had been published there.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.app.publishing import yank
from service.app.signing_states import refresh
from service.contract.config import Config
from service.contract.messages import ExtensionType
from service.core.folders import tree_digest
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import TIMESTAMP_KEY, decode_record, encode_record, index_key
from service.registry.signing import Signer
from service.registry.statements import Signature, pae
from service.wire.service import flush_subscriptions
from tests.app.test_cli import cli, run
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
from tests.deploy.test_nats_security import registry_cli, run_cli
from tests.registry import signed
from tests.registry.layout import layout

pytestmark = pytest.mark.anyio
STREAMS = ("KV_extension-index", "OBJ_extension-archives")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[NatsServer]:
    """The air-gapped site's own JetStream nats-server."""
    server = NatsServer(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(tmp_path / "site-jetstream")])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def connected(server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(server.url, max_reconnect_attempts=1, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


def publisher_config(url: str, tmp_path: Path) -> Config:
    empty = tmp_path / "no-extensions"
    empty.mkdir(parents=True, exist_ok=True)
    return make_config(url, tmp_path / "publisher", roots=[empty])


async def publish(nc: Client, tmp_path: Path, signer: Signer, name: str, version: str, **more: Any) -> None:
    folder = write_extension(tmp_path / "checkout" / f"{name}-{version}", "taskserv", name, version, **more)
    await publish_folder(nc, folder, signer, publisher_config("nats://unused", tmp_path))


def pinned(*keys: str) -> tuple[str, ...]:
    """The `--set` of a site whose configuration pins `keys`."""
    return ("--set", "registry.trusted=[" + ", ".join(f'{{key = "{key}"}}' for key in keys) + "]")


async def export(server: NatsServer, path: Path, *args: str) -> dict[str, Any]:
    code, out, err = await cli(server, "bundle", "export", str(path), *args, "--json")
    assert code == 0, err
    exported: dict[str, Any] = json.loads(out)
    return exported


async def import_(server: NatsServer, path: Path, *keys: str, json_out: bool = True) -> tuple[int, str, str]:
    return await cli(server, "bundle", "import", str(path), *pinned(*keys), *(("--json",) if json_out else ()))


async def messages(nc: Client) -> dict[str, int]:
    """How many messages the registry's two streams ever stored: what a write would change."""
    js = nc.jetstream()
    return {stream: (await js.stream_info(stream)).state.last_seq for stream in STREAMS}


async def index_values(nc: Client) -> dict[str, bytes]:
    buckets = RegistryBuckets(nc)
    await buckets.open(archives=False)
    return {u.key: u.value for u in await buckets.index.entries() if u.value is not None}


async def published(events: EventLog, count: int) -> set[tuple[str, str]]:
    """(name, version) of the loads announced as published, once there are `count` of them."""

    def found() -> set[tuple[str, str]]:
        return {
            (e["extension"]["metadata"]["name"], e["extension"]["metadata"]["version"])
            for e in events.bodies(".loaded")
            if e["reason"] == "published"
        }

    with anyio.fail_after(WAIT):
        while len(found()) < count:
            await events.wait_for(len(events.bodies(".loaded")) + 1, ".loaded")
    return found()


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    """The bundle's members (name -> bytes, in order) changed by `change`, written back as a tar."""
    with tarfile.open(path, "r:") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    change(members)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


async def test_a_bundle_carries_the_registry_to_a_site_whose_loaders_serve_it_as_published_there(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    await publish(nc, tmp_path, signer, "vault", "1.1.0")
    await publish(nc, tmp_path, signer, "app", "1.0.0", dependencies=["vault@^1"])
    buckets = RegistryBuckets(nc)
    await buckets.open()
    await refresh(buckets, signer, (), 3600)
    bundle = tmp_path / "registry.bundle"
    exported = await export(nats_server, bundle)
    assert exported["sha256"] == sha256_of(bundle) and exported["size"] == bundle.stat().st_size
    assert [(r["key"], r["sequence"], r["versions"]) for r in exported["records"]] == [
        ("taskserv.app", 1, ["1.0.0"]),
        ("taskserv.vault", 2, ["1.0.0", "1.1.0"]),
    ]
    assert len(exported["archives"]) == 3 and exported["timestamp"] is True and exported["left_out"] == []
    code, out, err = await cli(nats_server, "bundle", "export", str(tmp_path / "again.bundle"))
    assert code == 0, err
    assert out.splitlines() == [
        f"exported 2 extensions (3 archives) and the signed timestamp: {exported['size']} bytes",
        f"{exported['sha256'].removeprefix('sha256:')}  {tmp_path / 'again.bundle'}",  # as sha256sum writes it
    ]

    async with connected(site) as at_site:
        await set_up_streams(at_site)
        empty = tmp_path / "site-tree"
        empty.mkdir()
        loader = make_config(
            site.url,
            tmp_path / "site-loader",
            roots=[empty],
            overrides=registry_settings(signer.public_key, auto_update=True),
        )
        events = EventLog()
        await at_site.subscribe("extensions.loaded", cb=events.add)
        await flush_subscriptions(at_site)
        async with running_service(loader):
            code, out, err = await import_(site, bundle, signer.public_key, json_out=False)
            assert code == 0, err
            assert out.splitlines() == [
                f"{bundle}: {exported['sha256']}",
                "added taskserv vault (sequence 2)",  # a dependency first: a loader finds it as app arrives
                "added taskserv app (sequence 1)",
                "archives: 3 written, 0 already there",
                "timestamp: written",
            ]
            assert err == ""
            # Announced as if published at the site: the latest of each, fetched from the site's own buckets.
            assert await published(events, 2) == {("app", "1.0.0"), ("vault", "1.1.0")}
            client = LoaderClient(at_site, timeout=WAIT)
            assert (await client.load("taskserv", "vault", "1.0.0"))["metadata"]["version"] == "1.0.0"
            loaded = await client.load("taskserv", "app", with_dependencies=True)
            assert (loaded["metadata"]["name"], loaded["metadata"]["version"]) == ("app", "1.0.0")
        assert await index_values(at_site) == await index_values(nc)  # byte for byte, the timestamp too


async def test_the_same_registry_content_gives_the_same_bundle_bytes_wherever_it_is_exported(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    await publish(nc, tmp_path, signer, "etcd", "3.5.0")
    buckets = RegistryBuckets(nc)
    await buckets.open()
    await yank(buckets, ExtensionType.TASKSERV, "etcd", "3.5.0", signer=signer)
    await refresh(buckets, signer, (), 3600)
    first, second, from_site = tmp_path / "1.bundle", tmp_path / "2.bundle", tmp_path / "site.bundle"
    one = await export(nats_server, first)
    two = await export(nats_server, second)
    assert one["sha256"] == two["sha256"] and first.read_bytes() == second.read_bytes()
    with tarfile.open(first, "r:") as tar:  # fixed order, times, owners and modes
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[:4] == [
            "bundle.json",
            "records/taskserv.etcd.json",
            "records/taskserv.vault.json",
            "timestamp.json",
        ]
        assert names[4:] == sorted(names[4:]) and len(names) == 6 and names[-1].startswith("archives/")
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    async with connected(site) as at_site:
        await set_up_streams(at_site)
        code, _, err = await import_(site, first, signer.public_key)
        assert code == 0, err
    again = await export(site, from_site)
    assert again["sha256"] == one["sha256"] and from_site.read_bytes() == first.read_bytes()


def _flip_a_byte(members: dict[str, bytes]) -> str:
    name = next(n for n in members if n.startswith("archives/"))
    data = bytearray(members[name])
    data[len(data) // 2] ^= 0x01
    members[name] = bytes(data)
    return f"its archive's bytes have the sha256 sha256:{hashlib.sha256(data).hexdigest()}, not the"


def _change_a_dependency(members: dict[str, bytes]) -> str:
    record = decode_record(members["records/taskserv.app.json"])
    changed = msgspec.structs.replace(record.releases["1.0.0"], dependencies=("taskserv:evil",))
    members["records/taskserv.app.json"] = encode_record(msgspec.structs.replace(record, releases={"1.0.0": changed}))
    return (
        "taskserv app 1.0.0: not trusted by this site's keys: its index entry does not say what its signed "
        "statement says: dependencies differ"
    )


def _change_a_signed_dependency(members: dict[str, bytes]) -> str:
    record = decode_record(members["records/taskserv.app.json"])
    release = record.releases["1.0.0"]
    assert release.statement is not None
    payload = release.statement.payload_bytes().replace(b"taskserv:etcd", b"taskserv:evil")
    statement = msgspec.structs.replace(release.statement, payload=base64.b64encode(payload).decode())
    changed = msgspec.structs.replace(release, statement=statement, dependencies=("taskserv:evil@^3",))
    members["records/taskserv.app.json"] = encode_record(msgspec.structs.replace(record, releases={"1.0.0": changed}))
    return (
        "taskserv app 1.0.0: not trusted by this site's keys: its statement is not the one its extension's "
        "signed state lists"
    )


def _resign_the_state(members: dict[str, bytes], attacker: Signer) -> str:
    record = decode_record(members["records/taskserv.app.json"])
    assert record.state is not None
    message = pae(record.state.payload_type, record.state.payload_bytes())
    state = msgspec.structs.replace(
        record.state, signatures=(Signature(key=attacker.public_key, sig=attacker.sign(message)),)
    )
    members["records/taskserv.app.json"] = encode_record(msgspec.structs.replace(record, state=state))
    return (
        f"taskserv app: not trusted by this site's keys: its extension's signed state is not trusted: its signer "
        f"{attacker.public_key} is not one of the keys"
    )


def _insert_a_release(members: dict[str, bytes], attacker: Signer, folder: Path) -> str:
    """A version the attacker made, signed by its key, its archive and record entry in the bundle."""
    source = write_extension(folder, "taskserv", "app", "9.9.9")
    archive = pack(source)
    digest = digest_bytes(archive)
    statement = signed.statement("app", "9.9.9", digest=digest, tree_digest=tree_digest(source), size=len(archive))
    release = signed.release(attacker, statement)
    record = decode_record(members["records/taskserv.app.json"])
    members["records/taskserv.app.json"] = encode_record(
        msgspec.structs.replace(record, releases={**record.releases, "9.9.9": release})
    )
    manifest = json.loads(members["bundle.json"])
    manifest["archives"] = sorted([*manifest["archives"], digest])
    members["bundle.json"] = json.dumps(manifest).encode()
    members[f"archives/{digest.removeprefix('sha256:')}.tar.gz"] = archive
    return "taskserv app 9.9.9: not trusted by this site's keys: it is not in its extension's signed state"


@pytest.mark.parametrize(
    "tampering",
    [
        "archive-byte-flipped",
        "dependency-changed",
        "signed-dependency-changed",
        "release-inserted",
        "state-resigned-by-unpinned-key",
    ],
)
async def test_a_tampered_bundle_is_refused_whole_and_nothing_is_written_at_the_site(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer, tampering: str
) -> None:
    await publish(nc, tmp_path, signer, "etcd", "3.5.0")
    await publish(nc, tmp_path, signer, "app", "1.0.0", dependencies=["etcd@^3"])
    bundle = tmp_path / "registry.bundle"
    await export(nats_server, bundle)
    attacker = signed.key()
    said: list[str] = []

    def tamper(members: dict[str, bytes]) -> None:
        if tampering == "archive-byte-flipped":
            said.append(_flip_a_byte(members))
        elif tampering == "dependency-changed":
            said.append(_change_a_dependency(members))
        elif tampering == "signed-dependency-changed":
            said.append(_change_a_signed_dependency(members))
        elif tampering == "release-inserted":
            said.append(_insert_a_release(members, attacker, tmp_path / "forged"))
        else:
            said.append(_resign_the_state(members, attacker))

    rewrite(bundle, tamper)
    async with connected(site) as at_site:
        await set_up_streams(at_site)
        before = await messages(at_site)
        code, out, err = await import_(site, bundle, signer.public_key)
        assert (code, out) == (1, ""), err
        assert f"error: {bundle}: refused, nothing written:" in err and said[0] in err
        assert "no release in the bundle names it" not in err  # one thing wrong is named once
        assert await messages(at_site) == before  # not the untouched etcd either: the bundle is refused whole
        assert await index_values(at_site) == {}


async def test_importing_a_bundle_twice_changes_nothing_the_second_time(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    buckets = RegistryBuckets(nc)
    await buckets.open()
    await refresh(buckets, signer, (), 3600)
    bundle = tmp_path / "registry.bundle"
    await export(nats_server, bundle)
    async with connected(site) as at_site:
        await set_up_streams(at_site)
        code, out, err = await import_(site, bundle, signer.public_key)
        assert code == 0, err
        first = json.loads(out)
        assert (first["unchanged"], first["archives_written"], first["timestamp"]) == (False, 1, "written")
        assert [(r["key"], r["status"], r["previous"]) for r in first["records"]] == [("taskserv.vault", "added", None)]
        after = await messages(at_site)
        code, out, err = await import_(site, bundle, signer.public_key)
        assert code == 0, err
        second = json.loads(out)
        assert second["unchanged"] is True and second["warnings"] == []
        assert (second["archives_written"], second["archives_present"], second["timestamp"]) == (0, 1, "unchanged")
        assert [(r["status"], r["previous"], r["sequence"]) for r in second["records"]] == [("unchanged", 1, 1)]
        assert await messages(at_site) == after
        code, out, _ = await import_(site, bundle, signer.public_key, json_out=False)
        assert code == 0 and out.splitlines()[-1] == "unchanged: the site holds everything in the bundle already"


async def test_a_bundle_that_would_take_a_record_back_or_that_diverges_is_refused_whole(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    await publish(nc, tmp_path, signer, "etcd", "3.5.0")
    older = tmp_path / "older.bundle"  # vault at sequence 1, and etcd
    await export(nats_server, older)
    await publish(nc, tmp_path, signer, "vault", "1.1.0")
    newer = tmp_path / "newer.bundle"  # vault at sequence 2 alone
    await export(nats_server, newer, "taskserv", "vault")
    async with connected(site) as at_site:
        await set_up_streams(at_site)
        code, _, err = await import_(site, newer, signer.public_key)
        assert code == 0, err
        before = await messages(at_site)
        code, out, err = await import_(site, older, signer.public_key)
        assert (code, out) == (1, "")
        assert (
            "taskserv vault: the bundle's signed state is sequence 1, older than the site's record is sequence 2: "
            "a rollback"
        ) in err
        assert await messages(at_site) == before
        assert sorted(await index_values(at_site)) == ["taskserv.vault"]  # etcd, new to the site, not written either

        # The same sequence signed twice, in two places: refused too.
        await publish(nc, tmp_path, signer, "vault", "1.2.0")
        third = tmp_path / "third.bundle"
        await export(nats_server, third, "taskserv", "vault")
        await publish(at_site, tmp_path / "at-site", signer, "vault", "9.0.0")
        before = await messages(at_site)
        code, _, err = await import_(site, third, signer.public_key)
        assert code == 1
        assert "taskserv vault: the bundle's signed state and the site's are both sequence 3, and differ" in err
        assert await messages(at_site) == before


async def test_a_site_record_its_keys_do_not_trust_is_replaced_and_said_so(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    bundle = tmp_path / "registry.bundle"
    await export(nats_server, bundle)
    attacker = signed.key()
    forged = signed.record(attacker, [signed.release(attacker, signed.statement("vault", "6.6.6"))], name="vault")
    async with connected(site) as at_site:
        await set_up_streams(at_site)
        buckets = RegistryBuckets(at_site)
        await buckets.open()
        await buckets.index.put(index_key("taskserv", "vault"), encode_record(forged), 0)
        code, out, err = await import_(site, bundle, signer.public_key)
        assert code == 0, err
        assert [(r["status"], r["previous"]) for r in json.loads(out)["records"]] == [("replaced", None)]
        assert (
            "warning: taskserv vault: the site's record, whose signed state this site's keys do not trust, is "
            "replaced by the bundle's (sequence 1)" in err
        )
        assert await index_values(at_site) == await index_values(nc)


async def test_the_signed_timestamp_is_written_only_where_the_site_s_loaders_can_rely_on_it(
    nats_server: NatsServer, nc: Client, site: NatsServer, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    await publish(nc, tmp_path, signer, "etcd", "3.5.0")
    buckets = RegistryBuckets(nc)
    await buckets.open()
    await refresh(buckets, signer, (), 3600)
    first = tmp_path / "first.bundle"
    await export(nats_server, first)
    async with connected(site) as at_site:
        await set_up_streams(at_site)
        # A key pinned for taskservs only trusts the records, never a timestamp (only a key without limits may).
        limited = ("--set", f'registry.trusted=[{{key = "{signer.public_key}", types = ["taskserv"]}}]')
        code, out, err = await cli(site, "bundle", "import", str(first), *limited, "--json")
        assert code == 0, err
        assert json.loads(out)["timestamp"] == "left out: no key this site pins without limits signed it"
        assert "warning: the signed timestamp is left out: no key this site pins without limits" in err
        assert sorted(await index_values(at_site)) == ["taskserv.etcd", "taskserv.vault"]

        # A timestamp that lists an extension newer than the site has it, in a bundle without that extension: the
        # site's loaders would take their record for a rollback, so it stays out.
        await yank(buckets, ExtensionType.TASKSERV, "etcd", "3.5.0", signer=signer)
        await refresh(buckets, signer, (), 3600)
        vault_only = tmp_path / "vault.bundle"
        await export(nats_server, vault_only, "taskserv", "vault")
        code, out, err = await import_(site, vault_only, signer.public_key)
        assert code == 0, err
        said = json.loads(out)["timestamp"]
        assert said.startswith("left out: it lists taskserv etcd at sequence 2, and this site has sequence 1"), said
        assert TIMESTAMP_KEY not in await index_values(at_site)
        # With etcd in the bundle, it goes in.
        everything = tmp_path / "everything.bundle"
        await export(nats_server, everything)
        code, out, err = await import_(site, everything, signer.public_key)
        assert code == 0, err
        assert json.loads(out)["timestamp"] == "written" and json.loads(out)["warnings"] == []
        assert await index_values(at_site) == await index_values(nc)


async def test_since_and_extension_names_choose_what_is_exported(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    await publish(nc, tmp_path, signer, "vault", "1.0.0")
    await publish(nc, tmp_path, signer, "etcd", "3.5.0")
    between = datetime.now(UTC)
    await publish(nc, tmp_path, signer, "vault", "1.1.0")

    async def chosen(*args: str) -> list[tuple[str, int]]:
        exported = await export(nats_server, tmp_path / "chosen.bundle", *args)
        return [(r["key"], r["sequence"]) for r in exported["records"]]

    assert await chosen() == [("taskserv.etcd", 1), ("taskserv.vault", 2)]
    assert await chosen("--since", "0") == [("taskserv.etcd", 1), ("taskserv.vault", 2)]
    assert await chosen("--since", "1") == [("taskserv.vault", 2)]
    assert await chosen("--since", "2") == []
    assert await chosen("--since", between.isoformat()) == [("taskserv.vault", 2)]
    assert await chosen("--since", between.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) == [("taskserv.vault", 2)]
    assert await chosen("taskserv", "etcd") == [("taskserv.etcd", 1)]
    assert await chosen("taskservs", "etcd", "taskserv", "vault") == [("taskserv.etcd", 1), ("taskserv.vault", 2)]
    assert await chosen("--since", "1", "taskserv", "etcd") == []
    exported = await export(nats_server, tmp_path / "vault.bundle", "--since", "1")
    assert len(exported["archives"]) == 2  # every release of a record chosen: the site needs them all
    code, out, err = await cli(nats_server, "bundle", "export", str(tmp_path / "etcd.bundle"), "taskserv", "etcd")
    assert code == 0 and out.startswith("exported 1 extension (1 archive): "), err
    code, out, err = await cli(nats_server, "bundle", "export", str(tmp_path / "x.bundle"), "taskserv", "nothere")
    assert (code, out) == (1, "") and "the registry has no record of taskserv nothere" in err
    assert not (tmp_path / "x.bundle").exists()


async def test_exit_codes_for_a_bad_file_bad_arguments_and_an_unreachable_server(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    await set_up_streams(nc)
    empty = tmp_path / "empty.bundle"
    exported = await export(nats_server, empty)  # an empty registry gives a bundle of nothing
    assert (exported["records"], exported["archives"], exported["timestamp"]) == ([], [], False)
    key = pinned(signer.public_key)
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"not a tar file at all" * 100)
    other_format = tmp_path / "other.bundle"
    other_format.write_bytes(empty.read_bytes())

    def newer_format(members: dict[str, bytes]) -> None:
        members["bundle.json"] = members["bundle.json"].replace(b".v1+json", b".v9+json")

    rewrite(other_format, newer_format)
    unreachable = ("--server", "nats://127.0.0.1:1")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("bundle", "import", str(tmp_path / "missing.bundle"), *key), 2, "No such file"),
        (("bundle", "import", str(garbage), *key), 2, "not a bundle (an uncompressed tar file)"),
        (("bundle", "import", str(other_format), *key), 2, "which this version does not read"),
        (("bundle", "import", str(empty)), 2, "pins no key ([[registry.trusted]]"),
        (("bundle", "export", str(tmp_path / "x"), "taskserv"), 2, "pairs, TYPE NAME"),
        (("bundle", "export", str(tmp_path / "x"), "widget", "a"), 2, "'widget' is not an extension type"),
        (("bundle", "export", str(tmp_path / "x"), "--since", "yesterday"), 2, "neither a sequence number"),
        (("bundle", "export", str(tmp_path / "no-such-folder" / "x"), "--server", nats_server.url), 2, "No such"),
        (("bundle", "export", str(tmp_path / "x"), *unreachable), 4, "nats://127.0.0.1:1"),
        (("bundle", "import", str(empty), *key, *unreachable), 4, "nats://127.0.0.1:1"),
    ]
    for argv, expected, said in cases:
        code, out, err = await run(*argv)
        assert (code, out) == (expected, ""), (argv, err)
        assert said in err, (argv, err)
    code, out, err = await cli(nats_server, "bundle", "import", str(empty), *key, "--json")
    assert code == 0, err
    assert json.loads(out) | {"sha256": ""} == {
        "records": [],
        "archives_written": 0,
        "archives_present": 0,
        "timestamp": "none in the bundle",
        "warnings": [],
        "sha256": "",
        "unchanged": True,
    }


async def test_an_export_reads_what_a_loader_may_and_an_import_writes_as_the_publisher(
    tmp_path: Path, signer: Signer
) -> None:
    """Under the repo's nats.conf: the `loader` user may export (it reads the index and the archives), the
    orchestrator may not (it reads no archive); only `publisher` may import."""
    bundle = tmp_path / "registry.bundle"
    async with layout(tmp_path / "registry") as registry:
        await registry.publish(signer, "taskserv", "vault", "1.0.0")
        for user, expected in (("orchestrator", 4), ("loader", 0)):
            argv = registry_cli("bundle", "export", str(bundle), "--server", registry.url, user=user)
            code, _, err = await run_cli(argv)
            assert code == expected, (user, err)
    async with layout(tmp_path / "site") as at_site:
        for user, expected in (("loader", 4), ("publisher", 0)):
            argv = registry_cli("bundle", "import", str(bundle), "--server", at_site.url, user=user)
            code, out, err = await run_cli([*argv, *pinned(signer.public_key)])
            assert code == expected, (user, err)
        assert "added taskserv vault (sequence 1)" in out
        value, _ = await at_site.buckets.index.get(index_key("taskserv", "vault"))
        assert value is not None and decode_record(value).releases["1.0.0"].signer == signer.public_key
        assert (await at_site.buckets.index.get(TIMESTAMP_KEY))[0] is None
