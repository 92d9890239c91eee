"""Publishing to the registry: a folder checked as a load would check it, packed, signed, stored and indexed;
yanking a version; searching the index.

A publish puts the archive first (named by its sha256, so two publishers never overwrite each other's) and
then writes the index record with compare-and-set on the record's revision: of two publishers of one version
exactly one wins, the other is told it is already published, and no index entry ever points at an archive
that is not there. A publish cut off between the two leaves an archive no entry names, which the next publish
of the same bytes reuses.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from ..contract.config import Config
from ..contract.errors import InvalidExtension, LoaderError
from ..contract.messages import ExtensionType
from ..core.fetching import unpack_limits
from ..core.folders import METADATA, MetadataFile, tree_digest
from ..core.versions import Constraint
from ..registry.archive import ArchiveRefused, digest_bytes, pack, unpack
from ..registry.buckets import RegistryBuckets
from ..registry.errors import Conflict
from ..registry.index import (
    IndexRecord,
    IndexRecordInvalid,
    Release,
    decode_record,
    encode_record,
    index_key,
    object_name,
    with_release,
    with_yank,
)
from ..registry.signing import Signer, statement
from .serve import build_runner

_ATTEMPTS = 20  # compare-and-set rounds before giving up on a record that keeps changing


class PublishRefused(Exception):
    """The folder or the version cannot be published; the message says why."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked folder, packed and signed, ready to store."""

    extension_type: ExtensionType
    name: str
    archive: bytes
    release: Release


async def prepare(folder: Path, signer: Signer, config: Config) -> Prepared:
    """Reads the folder's metadata, runs the Nushell loader on the packed and unpacked folder exactly as a load
    of it would run, and signs the archive's digest. Raises PublishRefused."""
    folder = Path(await anyio.Path(folder).resolve())
    metadata = await anyio.to_thread.run_sync(_metadata, folder)
    extension_type = metadata.type
    try:
        archive = await anyio.to_thread.run_sync(pack, folder)
    except ArchiveRefused as exc:
        raise PublishRefused(f"{folder}: {exc.reason}") from None
    await _check(archive, extension_type, metadata.name, metadata.version, config)
    digest = digest_bytes(archive)
    release = Release(
        version=metadata.version,
        description=metadata.description,
        dependencies=metadata.dependencies,
        author=metadata.author,
        repository=metadata.repository,
        digest=digest,
        tree_digest=await anyio.to_thread.run_sync(tree_digest, folder),
        size=len(archive),
        object=object_name(digest),
        signer=signer.public_key,
        signature=signer.sign(statement(extension_type.value, metadata.name, metadata.version, digest)),
        published_at=datetime.now(UTC),
    )
    return Prepared(extension_type, metadata.name, archive, release)


def _metadata(folder: Path) -> MetadataFile:
    path = folder / METADATA
    try:
        return msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), MetadataFile)
    except FileNotFoundError:
        raise PublishRefused(f"{folder} has no {METADATA}: give the folder of one extension version") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise PublishRefused(f"{path}: {exc}") from None


async def _check(archive: bytes, extension_type: ExtensionType, name: str, version: str, config: Config) -> None:
    """The archive unpacked as a loader would unpack it, then loaded by the Nushell loader from there."""
    with tempfile.TemporaryDirectory(prefix="extension-publish-") as scratch:
        root = Path(scratch, "root")
        packed = Path(scratch, "archive.tar.gz")
        await anyio.Path(packed).write_bytes(archive)
        target = root / extension_type.folder / name / version
        try:
            await anyio.to_thread.run_sync(unpack, packed, target, unpack_limits(config.registry))
        except ArchiveRefused as exc:
            raise PublishRefused(f"the archive would be refused by a loader: {exc.reason}") from None
        runner = build_runner(config, cache_dir=Path(scratch, "cache"), spares=0)
        try:
            await runner.load(extension_type, name, version, root=root)
        except InvalidExtension as exc:
            raise PublishRefused("; ".join(exc.problems) or exc.message) from None
        except LoaderError as exc:
            raise PublishRefused(f"the loader refuses it: {exc.message}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    key: str
    release: Release
    revision: int


async def publish(buckets: RegistryBuckets, prepared: Prepared) -> Outcome:
    """Stores the archive, then indexes it (see the module's docstring). Raises PublishRefused when the version
    is already published, whoever published it."""
    release = prepared.release
    stored = False

    async def add(record: IndexRecord | None) -> IndexRecord:
        nonlocal stored
        if record is not None and release.version in record.releases:
            theirs = record.releases[release.version]
            if stored and theirs.digest != release.digest:
                await buckets.archives.delete(release.object)  # ours lost the race: no entry will name it
            raise PublishRefused(
                f"{prepared.extension_type.value} {prepared.name} {release.version} is already published "
                f"(digest {theirs.digest}, signer {theirs.signer}, {theirs.published_at:%Y-%m-%d %H:%M:%S} UTC): "
                "a published version never changes; publish a new version"
            )
        if not stored:
            await buckets.archives.put(release.object, prepared.archive)
            stored = True
        return with_release(record, prepared.extension_type, prepared.name, release)

    key = index_key(prepared.extension_type, prepared.name)
    _, revision = await _compare_and_set(buckets, key, add)
    return Outcome(key, release, revision)


async def yank(
    buckets: RegistryBuckets, extension_type: ExtensionType, name: str, version: str, *, undo: bool = False
) -> Outcome:
    async def mark(record: IndexRecord | None) -> IndexRecord:
        if record is None or version not in record.releases:
            known = ", ".join(record.releases) if record is not None else "none"
            raise PublishRefused(f"{extension_type.value} {name} {version} is not in the registry (versions: {known})")
        try:
            return with_yank(record, version, not undo)
        except (KeyError, ValueError) as exc:
            raise PublishRefused(str(exc)) from None

    key = index_key(extension_type, name)
    updated, revision = await _compare_and_set(buckets, key, mark)
    return Outcome(key, updated.releases[version], revision)


async def _compare_and_set(
    buckets: RegistryBuckets, key: str, change: Callable[[IndexRecord | None], Awaitable[IndexRecord]]
) -> tuple[IndexRecord, int]:
    """Writes `change` of the record as read, if no one wrote the record meanwhile; else reads it again and
    retries (the KV revision is the lock). The record written and its new revision."""
    for _ in range(_ATTEMPTS):
        value, revision = await buckets.index.get(key)
        updated = await change(decode_record(value) if value is not None else None)
        try:
            return updated, await buckets.index.put(key, encode_record(updated), revision)
        except Conflict:
            continue  # someone wrote the record meanwhile: read it again
    raise PublishRefused(f"the index record {key} kept changing; try again")


@dataclass(frozen=True, slots=True)
class Found:
    record: IndexRecord
    latest: Release | None  # the highest stable version not yanked


async def search(buckets: RegistryBuckets, words: Sequence[str]) -> list[Found]:
    """Extensions whose name or description (of any version) holds every word, any letter case."""
    wanted = [w.lower() for w in words]
    found: list[Found] = []
    for update in await buckets.index.entries():
        if update.value is None:
            continue
        try:
            record = decode_record(update.value)
        except IndexRecordInvalid:
            continue
        text = " ".join([record.name, *(r.description for r in record.releases.values())]).lower()
        if all(w in text for w in wanted):
            best = Constraint.parse(None).best(v for v, r in record.releases.items() if not r.yanked)
            found.append(Found(record, record.releases[best] if best is not None else None))
    return sorted(found, key=lambda f: (f.record.extension_type.value, f.record.name))
