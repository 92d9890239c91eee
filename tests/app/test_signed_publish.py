"""The publisher's side of signed registry metadata, against a real JetStream nats-server (and the real Nushell
loader each publish runs): every publish and yank signs the release and the extension's next state, on a state
the publisher can verify; dependencies are signed with their types; `refresh` signs a timestamp of the verified
states; `resign` carries releases of the old format over from their archives."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nkeys
import pytest
from nats.aio.client import Client

from service.app.natsserver import NatsServer
from service.app.publishing import PublishRefused, prepare, publish, yank
from service.contract.config import Config
from service.contract.messages import ExtensionType
from service.core.folders import tree_digest
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import (
    TIMESTAMP_KEY,
    IndexRecord,
    Release,
    decode_record,
    decode_timestamp,
    encode_record,
    index_key,
    object_name,
)
from service.registry.signing import Signer, read_seed, statement, write_seed
from service.registry.statements import ReleaseStatement, StateStatement, TimestampStatement, read, signed_by
from tests.app.test_cli import cli
from tests.conftest import NU, make_config, publish_folder, set_up_streams, write_extension

pytestmark = pytest.mark.anyio
T = ExtensionType.TASKSERV
NUSHELL = ("--set", f'nushell.path="{NU}"')


def publisher_config(url: str, tmp_path: Path, *trusted: dict[str, Any], roots: list[Path] | None = None) -> Config:
    """A publisher's configuration: no local extension unless told, and the keys it trusts besides its own."""
    empty = tmp_path / "no-extensions"
    empty.mkdir(exist_ok=True)
    overrides: dict[str, Any] = {"registry.trusted": list(trusted)} if trusted else {}
    if any(t["key"].startswith("U") for t in trusted):
        overrides["registry.accept_v1"] = True
    return make_config(url, tmp_path, roots=roots or [empty], overrides=overrides)


def other_signer(tmp_path: Path, name: str = "other") -> Signer:
    write_seed(tmp_path / f"{name}.nk")
    return read_seed(tmp_path / f"{name}.nk")


async def record_of(buckets: RegistryBuckets, extension_type: ExtensionType, name: str) -> tuple[IndexRecord, int]:
    value, revision = await buckets.index.get(index_key(extension_type, name))
    assert value is not None
    return decode_record(value), revision


async def opened(nc: Client) -> RegistryBuckets:
    await set_up_streams(nc)
    buckets = RegistryBuckets(nc)
    await buckets.open()
    return buckets


def signed_state(record: IndexRecord, key: str) -> StateStatement:
    assert record.state is not None and signed_by(record.state, [key]) == {key}
    return read(record.state, StateStatement)


def signed_release(release: Release, key: str) -> ReleaseStatement:
    """The release's statement, signed by `key`, with the record's plain copies equal to what it signs."""
    assert release.statement is not None and signed_by(release.statement, [key]) == {key}
    signed = read(release.statement, ReleaseStatement)
    plain = (release.version, release.digest, release.size, release.tree_digest, release.dependencies)
    assert plain == (signed.version, signed.digest, signed.size, signed.tree_digest, signed.dependencies)
    assert (release.description, release.published_at) == (signed.description, signed.published_at)
    assert (release.signer, release.signature, release.object) == (key, "", object_name(signed.digest))
    return signed


async def test_a_publish_signs_the_release_and_the_state_whose_sequence_grows_with_each_change(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    config = publisher_config(nats_server.url, tmp_path)
    first = write_extension(tmp_path / "a", "taskserv", "vault", "1.0.0")
    await publish_folder(nc, first, signer, config)
    await publish_folder(nc, write_extension(tmp_path / "b", "taskserv", "vault", "1.1.0"), signer, config)
    buckets = await opened(nc)
    record, _ = await record_of(buckets, T, "vault")
    state = signed_state(record, signer.public_key)
    assert (state.extension_type, state.name, state.sequence, state.yanked) == (T, "vault", 2, ())
    assert state.releases == {v: r.statement.digest() for v, r in record.releases.items() if r.statement}
    assert sorted(state.releases) == ["1.0.0", "1.1.0"]
    signed = signed_release(record.releases["1.0.0"], signer.public_key)
    assert (signed.extension_type, signed.name, signed.tree_digest) == (T, "vault", tree_digest(first))

    outcome = await yank(buckets, T, "vault", "1.1.0", signer=signer)
    assert outcome.release.yanked and outcome.warnings == ()
    record, _ = await record_of(buckets, T, "vault")
    state = signed_state(record, signer.public_key)
    assert (state.sequence, state.yanked) == (3, ("1.1.0",))
    assert [r.yanked for r in record.releases.values()] == [False, True]
    await yank(buckets, T, "vault", "1.1.0", signer=signer, undo=True)
    record, _ = await record_of(buckets, T, "vault")
    assert (signed_state(record, signer.public_key).sequence, record.releases["1.1.0"].yanked) == (4, False)
    assert signed_state(record, signer.public_key).yanked == ()


async def test_dependencies_are_signed_with_their_types(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    local = tmp_path / "local"
    write_extension(local, "cluster", "monitoring", "1.0.0")
    config = publisher_config(nats_server.url, tmp_path, roots=[local])
    deps = ["postgres@^16", "provider:aws", "cluster:buildkit@>=1.0,<2", "monitoring"]
    app = write_extension(tmp_path / "a", "taskserv", "app", "1.0.0", dependencies=deps)
    published = await publish_folder(nc, app, signer, config)
    typed = ("taskserv:postgres@^16", "provider:aws", "cluster:buildkit@>=1.0,<2", "taskserv:monitoring")
    assert signed_release(published, signer.public_key).dependencies == typed

    # The owner's type wins where the registry (or a local extension path) has that name of it.
    await publish_folder(nc, write_extension(tmp_path / "b", "cluster", "postgres", "16.0.0"), signer, config)
    web = write_extension(
        tmp_path / "c", "cluster", "web", "1.0.0", dependencies=["postgres@^16", "etcd", "monitoring"]
    )
    published = await publish_folder(nc, web, signer, config)
    assert signed_release(published, signer.public_key).dependencies == (
        "cluster:postgres@^16",
        "taskserv:etcd",
        "cluster:monitoring",
    )


async def test_a_publish_or_yank_onto_a_state_signed_by_a_key_not_trusted_is_refused_and_writes_nothing(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    other = other_signer(tmp_path)
    await publish_folder(
        nc,
        write_extension(tmp_path / "a", "taskserv", "vault", "1.0.0"),
        other,
        publisher_config(nats_server.url, tmp_path),
    )
    buckets = await opened(nc)
    before = await record_of(buckets, T, "vault")
    folder = write_extension(tmp_path / "b", "taskserv", "vault", "1.1.0")
    for trusted in ([], [{"key": other.public_key, "types": ["provider"]}], [{"key": signer.public_key}]):
        config = publisher_config(nats_server.url, tmp_path, *trusted)
        prepared = await prepare(folder, signer, config)
        with pytest.raises(PublishRefused, match=f"signed by {other.public_key}, which this publisher does not trust"):
            await publish(buckets, prepared)
        assert await record_of(buckets, T, "vault") == before
        assert await buckets.archives.info(prepared.release.object) is None
    with pytest.raises(PublishRefused, match=r"\[\[registry.trusted\]\]"):
        await yank(buckets, T, "vault", "1.0.0", signer=signer)
    assert await record_of(buckets, T, "vault") == before

    key = tmp_path / "publisher.nk"  # the `signer` fixture's seed
    code, _, err = await cli(nats_server, "publish", str(folder), "--key", str(key), *NUSHELL)
    assert code == 1 and other.public_key in err and "[[registry.trusted]]" in err
    code, _, err = await cli(nats_server, "yank", "taskserv", "vault", "1.0.0", "--key", str(key))
    assert code == 1 and other.public_key in err
    assert await record_of(buckets, T, "vault") == before

    # Trusted for it, the publisher builds on that state.
    trusting = publisher_config(nats_server.url, tmp_path, {"key": other.public_key, "types": ["taskserv"]})
    outcome = await publish(buckets, await prepare(folder, signer, trusting))
    record, _ = await record_of(buckets, T, "vault")
    assert signed_state(record, signer.public_key).sequence == 2 and outcome.warnings == ()
    assert sorted(record.releases) == ["1.0.0", "1.1.0"]
    assert signed_release(record.releases["1.0.0"], other.public_key).version == "1.0.0"


async def test_releases_the_signed_state_does_not_list_are_dropped_by_the_next_publish(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    config = publisher_config(nats_server.url, tmp_path)
    original = await publish_folder(nc, write_extension(tmp_path / "a", "taskserv", "vault", "1.0.0"), signer, config)
    buckets = await opened(nc)
    record, revision = await record_of(buckets, T, "vault")
    inserted = msgspec.structs.replace(original, version="9.0.0")
    edited = msgspec.structs.replace(original, description="edited by hand")
    forged = msgspec.structs.replace(record, releases={"1.0.0": edited, "9.0.0": inserted})
    await buckets.index.put(index_key(T, "vault"), encode_record(forged), revision)

    outcome = await publish(
        buckets, await prepare(write_extension(tmp_path / "b", "taskserv", "vault", "1.1.0"), signer, config)
    )
    assert any("vault 9.0.0 is not in the extension's signed state" in w for w in outcome.warnings), outcome.warnings
    record, _ = await record_of(buckets, T, "vault")
    assert sorted(record.releases) == ["1.0.0", "1.1.0"]
    assert record.releases["1.0.0"] == original  # its plain copies set back to what is signed
    assert sorted(signed_state(record, signer.public_key).releases) == ["1.0.0", "1.1.0"]

    # A listed release whose statement no trusted key signed (its signature stripped) is dropped as well; the
    # state still lists it, so loaders refuse it rather than pick another version in its place.
    newest = record.releases["1.1.0"]
    assert newest.statement is not None
    stripped = msgspec.structs.replace(newest, statement=msgspec.structs.replace(newest.statement, signatures=()))
    _, revision = await record_of(buckets, T, "vault")
    unsigned = msgspec.structs.replace(record, releases={**record.releases, "1.1.0": stripped})
    await buckets.index.put(index_key(T, "vault"), encode_record(unsigned), revision)
    outcome = await yank(buckets, T, "vault", "1.0.0", signer=signer)
    assert outcome.warnings == (
        "taskserv vault 1.1.0 is not the release its signed state lists: left out of the record",
    )
    record, _ = await record_of(buckets, T, "vault")
    assert list(record.releases) == ["1.0.0"] and record.releases["1.0.0"].yanked
    state = signed_state(record, signer.public_key)
    assert (state.sequence, sorted(state.releases), state.yanked) == (3, ["1.0.0", "1.1.0"], ("1.0.0",))


async def test_yank_without_a_key_is_a_usage_error(nats_server: NatsServer) -> None:
    code, _, err = await cli(nats_server, "yank", "taskserv", "vault", "1.0.0")
    assert code == 2 and "--key" in err


async def test_refresh_signs_a_timestamp_listing_the_sequence_of_each_verified_state(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    config = publisher_config(nats_server.url, tmp_path)
    for n, (name, version) in enumerate([("vault", "1.0.0"), ("vault", "1.1.0"), ("etcd", "3.5.0")]):
        await publish_folder(nc, write_extension(tmp_path / str(n), "taskserv", name, version), signer, config)
    other = other_signer(tmp_path)
    await publish_folder(nc, write_extension(tmp_path / "x", "taskserv", "redis", "7.0.0"), other, config)
    key = tmp_path / "publisher.nk"

    code, out, err = await cli(nats_server, "refresh", "--key", str(key), "--expires-in", "600", "--json")
    assert code == 0, err
    assert "taskserv.redis" in err and "taskserv.redis" in json.loads(out)["left_out"][0]
    buckets = await opened(nc)
    value, revision = await buckets.index.get(TIMESTAMP_KEY)
    assert value is not None and json.loads(out)["revision"] == revision
    envelope = decode_timestamp(value)
    assert signed_by(envelope, [signer.public_key, other.public_key]) == {signer.public_key}
    timestamp = read(envelope, TimestampStatement)
    assert timestamp.sequences == {"taskserv.vault": 2, "taskserv.etcd": 1}
    assert timestamp.expires_at - timestamp.issued_at == timedelta(seconds=600)
    assert abs(datetime.now(UTC) - timestamp.issued_at) < timedelta(minutes=5)

    code, out, err = await cli(nats_server, "refresh", "--key", str(key))  # over the one before it
    assert code == 0 and out.startswith("signed a timestamp of 2 extensions"), err
    value, newer = await buckets.index.get(TIMESTAMP_KEY)
    assert value is not None and newer > revision
    stamp = read(decode_timestamp(value), TimestampStatement)
    assert stamp.expires_at - stamp.issued_at == timedelta(days=1)
    code, out, _ = await cli(nats_server, "search", "vault")  # the timestamp is no extension
    assert code == 0 and len(out.splitlines()) == 2


def user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def sign_v1(seed: bytes, extension_type: ExtensionType, name: str, version: str, digest: str) -> tuple[str, str]:
    """The old format's signer and signature, made with a user seed as publishers then did."""
    keys = nkeys.from_seed(seed)
    signature = bytes(keys.sign(statement(extension_type.value, name, version, digest)))
    return bytes(keys.public_key).decode(), base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


async def old_format_record(
    buckets: RegistryBuckets, seed: bytes, name: str, folders: dict[str, Path], *, bad: tuple[str, ...] = ()
) -> None:
    """A record as the old publisher wrote it: archives stored, v1 signatures (wrong ones for `bad`), no statement
    and no state; its plain tree digest and description are not the archive's, as nothing signed them."""
    releases: dict[str, Release] = {}
    for version, folder in folders.items():
        archive = pack(folder)
        digest = digest_bytes(archive)
        await buckets.archives.put(object_name(digest), archive)
        signed_for = digest_bytes(b"other bytes") if version in bad else digest
        signer, signature = sign_v1(seed, T, name, version, signed_for)
        releases[version] = Release(
            version=version,
            description="not what the archive says",
            dependencies=("anything",),
            digest=digest,
            tree_digest="sha256:" + "0" * 64,
            size=len(archive),
            object=object_name(digest),
            signer=signer,
            signature=signature,
            published_at=datetime(2025, 1, 2, tzinfo=UTC),
            yanked=version == "1.0.0",
        )
    record = IndexRecord(extension_type=T, name=name, releases=releases)
    await buckets.index.put(index_key(T, name), encode_record(record), 0)


async def test_resign_carries_old_format_releases_over_from_their_archives_once(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    buckets = await opened(nc)
    seed, stranger = user_seed(), user_seed()
    folders = {
        v: write_extension(tmp_path / v, "taskserv", "vault", v, dependencies=["postgres@^16"])
        for v in ("1.0.0", "1.1.0", "1.2.0")
    }
    await old_format_record(buckets, seed, "vault", folders, bad=("1.2.0",))
    etcd = {"3.5.0": write_extension(tmp_path / "etcd", "taskserv", "etcd", "3.5.0")}
    await old_format_record(buckets, stranger, "etcd", etcd)  # someone else's: left alone
    _, etcd_revision = await record_of(buckets, T, "etcd")
    from_key = sign_v1(seed, T, "x", "1.0.0", digest_bytes(b""))[0]
    key = tmp_path / "publisher.nk"

    code, out, err = await cli(nats_server, "resign", "--key", str(key), "--from", from_key, "--json")
    assert code == 0, err
    assert "vault 1.2.0: its v1 signature" in err
    vault = next(r for r in json.loads(out)["records"] if r["key"] == "taskserv.vault")
    assert vault["versions"] == ["1.0.0", "1.1.0"] and len(vault["left_out"]) == 1
    record, revision = await record_of(buckets, T, "vault")
    state = signed_state(record, signer.public_key)
    assert (state.sequence, sorted(state.releases), state.yanked) == (1, ["1.0.0", "1.1.0"], ("1.0.0",))
    assert sorted(record.releases) == ["1.0.0", "1.1.0"]
    for version, release in record.releases.items():
        signed = signed_release(release, signer.public_key)
        assert signed.tree_digest == tree_digest(folders[version])
        assert signed.dependencies == ("taskserv:postgres@^16",)
        assert signed.description == "test extension vault"
        assert signed.published_at == datetime(2025, 1, 2, tzinfo=UTC)
        assert release.yanked == (version == "1.0.0")
    assert (await record_of(buckets, T, "etcd"))[1] == etcd_revision

    code, out, err = await cli(nats_server, "resign", "--key", str(key), "--from", from_key)
    assert code == 0 and out.startswith("nothing to re-sign"), err
    assert (await record_of(buckets, T, "vault"))[1] == revision
    assert (await record_of(buckets, T, "etcd"))[1] == etcd_revision

    typo = from_key[:-1] + ("A" if from_key[-1] != "A" else "B")  # never the key itself
    code, _, err = await cli(nats_server, "resign", "--key", str(key), "--from", typo)
    assert code == 2 and "public key" in err


async def test_a_publish_extends_an_old_format_record_only_when_its_signatures_verify_with_a_trusted_key(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    buckets = await opened(nc)
    seed = user_seed()
    old = write_extension(tmp_path / "old", "taskserv", "vault", "1.0.0")
    await old_format_record(buckets, seed, "vault", {"1.0.0": old})
    before = await record_of(buckets, T, "vault")
    folder = write_extension(tmp_path / "new", "taskserv", "vault", "1.1.0")
    with pytest.raises(PublishRefused, match="extension-loader resign"):
        await publish(buckets, await prepare(folder, signer, publisher_config(nats_server.url, tmp_path)))
    assert await record_of(buckets, T, "vault") == before

    user_key = before[0].releases["1.0.0"].signer
    trusting = publisher_config(nats_server.url, tmp_path, {"key": user_key})
    await publish(buckets, await prepare(folder, signer, trusting))
    record, _ = await record_of(buckets, T, "vault")
    state = signed_state(record, signer.public_key)
    assert (state.sequence, sorted(state.releases), state.yanked) == (1, ["1.0.0", "1.1.0"], ("1.0.0",))
    assert signed_release(record.releases["1.0.0"], signer.public_key).tree_digest == tree_digest(old)


async def test_resign_moves_a_retired_key_s_releases_and_state_to_a_new_key_once(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer
) -> None:
    """Key rotation: what the retired key signed is signed again by the new key, the statements' bytes (and so the
    state's digests of them) unchanged; the retired key may then be unpinned."""
    retired = other_signer(tmp_path, "retired")
    config = publisher_config(nats_server.url, tmp_path)
    for version in ("1.0.0", "1.1.0"):
        await publish_folder(nc, write_extension(tmp_path / version, "taskserv", "vault", version), retired, config)
    buckets = await opened(nc)
    await yank(buckets, T, "vault", "1.0.0", signer=retired)
    before, _ = await record_of(buckets, T, "vault")
    old_state = signed_state(before, retired.public_key)

    code, out, err = await cli(
        nats_server, "resign", "--key", str(tmp_path / "publisher.nk"), "--from", retired.public_key
    )
    assert code == 0, err
    assert out.strip() == "re-signed taskserv.vault: 1.0.0, 1.1.0"
    after, revision = await record_of(buckets, T, "vault")
    state = signed_state(after, signer.public_key)
    assert (state.sequence, state.releases, state.yanked) == (old_state.sequence + 1, old_state.releases, ("1.0.0",))
    for version, release in after.releases.items():
        assert signed_release(release, signer.public_key) == signed_release(
            before.releases[version], retired.public_key
        )
        assert release.statement is not None and not signed_by(release.statement, [retired.public_key])

    code, out, err = await cli(
        nats_server, "resign", "--key", str(tmp_path / "publisher.nk"), "--from", retired.public_key
    )
    assert code == 0 and out.startswith("nothing to re-sign"), err
    assert (await record_of(buckets, T, "vault"))[1] == revision
