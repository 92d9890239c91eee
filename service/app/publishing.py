"""Publishing to the registry: a folder checked as a load would check it, packed, signed, stored and indexed;
yanking a version; searching the index.

A publish puts the archive first (named by its sha256, so two publishers never overwrite each other's) and
then writes the index record with compare-and-set on the record's revision: of two publishers of one version
exactly one wins, the other is told it is already published, and no index entry ever points at an archive
that is not there. A publish cut off between the two leaves an archive no entry names, which the next publish
of the same bytes reuses. Each write signs the release and the extension's next state, on a state this
publisher can verify (`signing_states.py`); a record of the old format is carried over as `resign` would
carry it, when every release of it verifies with a key this publisher trusts (`resigning.py`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread

from ..contract.config import Config
from ..contract.errors import InvalidExtension, LoaderError
from ..contract.messages import ExtensionType
from ..contract.sections import TrustedKey
from ..core.fetching import unpack_limits
from ..core.folders import METADATA, tree_digest
from ..core.versions import Constraint
from ..registry.archive import ArchiveRefused, digest_bytes, pack, unpack
from ..registry.buckets import RegistryBuckets
from ..registry.index import (
    TIMESTAMP_KEY,
    IndexRecord,
    IndexRecordInvalid,
    Release,
    decode_record,
    index_key,
    object_name,
)
from ..registry.signing import Signer
from ..registry.statements import ReleaseStatement, StateStatement
from .resigning import Resigner
from .serve import build_runner
from .signing_states import (
    PublishRefused,
    allowed_keys,
    check_dependencies,
    compare_and_set,
    listed_releases,
    read_metadata,
    release_copy,
    seal_release,
    seal_state,
    typed_dependencies,
    verified_state,
)

__all__ = ["Found", "Outcome", "Prepared", "PublishRefused", "prepare", "publish", "search", "yank"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked folder, packed, with who signs it and whose signed states it builds on. `release` is the
    release as packed, its dependencies as written: the publish types them and signs it."""

    extension_type: ExtensionType
    name: str
    archive: bytes
    release: Release
    signer: Signer
    trusted: tuple[TrustedKey, ...]  # the publisher's [[registry.trusted]]
    config: Config


async def prepare(folder: Path, signer: Signer, config: Config) -> Prepared:
    """Reads the folder's metadata, and runs the Nushell loader on the packed and unpacked folder exactly as a
    load of it would run. Raises PublishRefused."""
    folder = Path(await anyio.Path(folder).resolve())
    metadata = await anyio.to_thread.run_sync(read_metadata, folder)
    problems = check_dependencies(metadata.dependencies)
    if problems:
        raise PublishRefused(f"{folder / METADATA}: " + "; ".join(problems))
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
        published_at=datetime.now(UTC),
    )
    return Prepared(extension_type, metadata.name, archive, release, signer, config.registry.trusted, config)


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
    warnings: tuple[str, ...] = ()  # releases dropped from the record: not as the signed state it built on lists


@dataclass(frozen=True, slots=True)
class _Base:
    """What a change builds on: the record, its verified state, the releases it lists, and what was dropped."""

    record: IndexRecord
    state: StateStatement
    releases: dict[str, Release]
    warnings: list[str]


async def _signed_base(record: IndexRecord, keys: set[str], resigner: Resigner | None) -> _Base:
    """The record's verified state (an old-format record carried over first, when `resigner` is given) and the
    releases it lists. PublishRefused for a state this publisher does not trust."""
    what = f"{record.extension_type.value} {record.name}"
    if record.state is None:
        if resigner is None:
            raise PublishRefused(
                f"{what} is a record of the old format: re-sign it first with "
                "`extension-loader resign --key FILE --from U...` (the key that signed it)"
            )
        carried, _, _ = await resigner.record(record, sorted(keys), strict=True)
        if carried is None:
            raise PublishRefused(f"{what} is a record of the old format with no release to carry over")
        record = carried
    state = verified_state(record, keys)
    releases, warnings = listed_releases(record, state)
    return _Base(record, state, releases, warnings)


async def publish(buckets: RegistryBuckets, prepared: Prepared) -> Outcome:
    """Stores the archive, then indexes it with its release statement and the extension's next state, signed (see
    the module's docstring). Raises PublishRefused when the version is already published, whoever published it,
    and when the record's state is not one this publisher can verify: then nothing is written."""
    kind, name, plain, signer = prepared.extension_type, prepared.name, prepared.release, prepared.signer
    keys = allowed_keys(signer.public_key, prepared.trusted, kind, name)
    paths = prepared.config.extension_paths
    signed = ReleaseStatement(
        extension_type=kind,
        name=name,
        version=plain.version,
        digest=plain.digest,
        size=plain.size,
        tree_digest=plain.tree_digest,
        dependencies=await typed_dependencies(plain.dependencies, kind, buckets, paths),
        description=plain.description,
        author=plain.author,
        repository=plain.repository,
        published_at=plain.published_at,
    )
    release = release_copy(seal_release(signed, signer), signed, signer.public_key, False)
    resigner = Resigner(buckets, signer, prepared.config)
    stored = False
    warnings: list[str] = []

    async def add(record: IndexRecord | None) -> IndexRecord:
        nonlocal stored, warnings
        theirs = record.releases.get(release.version) if record is not None else None
        base = await _signed_base(record, keys, resigner) if record is not None and theirs is None else None
        if theirs is not None or (base is not None and release.version in base.state.releases):
            if stored and (theirs is None or theirs.digest != release.digest):
                await buckets.archives.delete(release.object)  # ours lost the race: no entry will name it
            said = (
                f"digest {theirs.digest}, signer {theirs.signer}, {theirs.published_at:%Y-%m-%d %H:%M:%S} UTC"
                if theirs is not None
                else "listed in its signed state"
            )
            raise PublishRefused(
                f"{kind.value} {name} {release.version} is already published ({said}): "
                "a published version never changes; publish a new version"
            )
        if not stored:
            await buckets.archives.put(release.object, prepared.archive)
            stored = True
        if base is None:
            return seal_state(None, kind, name, None, {release.version: release}, (), signer)
        warnings = base.warnings
        releases = {**base.releases, release.version: release}
        return seal_state(base.record, kind, name, base.state, releases, base.state.yanked, signer)

    key = index_key(kind, name)
    _, revision = await compare_and_set(buckets, key, add)
    return Outcome(key, release, revision, tuple(warnings))


async def yank(
    buckets: RegistryBuckets,
    extension_type: ExtensionType,
    name: str,
    version: str,
    *,
    signer: Signer,
    trusted: Sequence[TrustedKey] = (),
    undo: bool = False,
) -> Outcome:
    """Marks a release yanked (`undo`: not yanked) in the extension's next signed state, built on a state this
    publisher can verify. Raises PublishRefused for a version the record or its state does not hold."""
    keys = allowed_keys(signer.public_key, trusted, extension_type, name)
    warnings: list[str] = []

    async def mark(record: IndexRecord | None) -> IndexRecord:
        nonlocal warnings
        if record is None or version not in record.releases:
            known = ", ".join(record.releases) if record is not None else "none"
            raise PublishRefused(f"{extension_type.value} {name} {version} is not in the registry (versions: {known})")
        base = await _signed_base(record, keys, None)
        if version not in base.releases:
            raise PublishRefused(f"{extension_type.value} {name} {version} is not a release of its signed state")
        warnings = base.warnings
        yanked = [v for v in base.state.yanked if v != version] + ([] if undo else [version])
        return seal_state(base.record, extension_type, name, base.state, base.releases, yanked, signer)

    key = index_key(extension_type, name)
    updated, revision = await compare_and_set(buckets, key, mark)
    return Outcome(key, updated.releases[version], revision, tuple(warnings))


@dataclass(frozen=True, slots=True)
class Found:
    record: IndexRecord
    latest: Release | None  # the highest stable version not yanked


async def search(buckets: RegistryBuckets, words: Sequence[str]) -> list[Found]:
    """Extensions whose name or description (of any version) holds every word, any letter case."""
    wanted = [w.lower() for w in words]
    found: list[Found] = []
    for update in await buckets.index.entries():
        if update.value is None or update.key == TIMESTAMP_KEY:
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
