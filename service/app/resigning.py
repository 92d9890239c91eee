"""Re-signing the old format: releases whose v1 signature (identity and archive digest only) verifies with a key
the publisher names, signed again as release statements, and a signed state over them.

The v1 signature vouched for the archive's bytes and nothing else, so nothing else is taken from the index:
each archive is fetched (its sha256 checked against the signed digest), unpacked with a loader's limits, and
its metadata.toml and tree digest read from what it holds. A release whose signature does not verify, or whose
archive is missing or differs, is left out and reported. A record already in the new format is left alone, so
running it twice changes nothing the second time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from ..contract.config import Config
from ..core.fetching import unpack_limits
from ..core.folders import tree_digest
from ..registry.archive import ArchiveRefused, unpack
from ..registry.buckets import RegistryBuckets
from ..registry.errors import ArchiveTooLarge
from ..registry.index import TIMESTAMP_KEY, IndexRecord, IndexRecordInvalid, Release, object_name
from ..registry.signing import Signer
from ..registry.statements import ReleaseStatement, StateStatement
from .signing_states import (
    PublishRefused,
    allowed_keys,
    compare_and_set,
    listed_releases,
    read_metadata,
    release_copy,
    seal_release,
    seal_state,
    typed_dependencies,
    v1_verifies,
    verified_state,
)


class LeftOut(Exception):
    """A release that is not re-signed; the message says why."""


@dataclass(frozen=True, slots=True)
class Resigned:
    key: str
    versions: tuple[str, ...]  # re-signed
    left_out: tuple[str, ...]  # "<version>: why", and anything else dropped from the record
    revision: int | None  # the record's new revision; None: not written


class Resigner:
    """Re-signs old-format releases with one key; what it re-signed is kept for a compare-and-set's retry."""

    def __init__(self, buckets: RegistryBuckets, signer: Signer, config: Config) -> None:
        self._buckets = buckets
        self._signer = signer
        self._config = config
        self._done: dict[tuple[str, str, str, str], Release] = {}  # (type, name, version, digest) -> re-signed

    async def release(self, record: IndexRecord, release: Release, from_keys: Sequence[str]) -> Release:
        """The release signed anew from its archive; LeftOut when its v1 signature does not verify with one of
        `from_keys` or its archive is not the one signed."""
        kind, name = record.extension_type, record.name
        if not v1_verifies(kind, name, release, from_keys):
            raise LeftOut(f"its v1 signature (signer {release.signer}) does not verify with any key given")
        done = (kind.value, name, release.version, release.digest)
        if done not in self._done:
            self._done[done] = await self._from_archive(record, release)
        return msgspec.structs.replace(self._done[done], yanked=release.yanked)

    async def _from_archive(self, record: IndexRecord, release: Release) -> Release:
        kind, name = record.extension_type, record.name
        limits = unpack_limits(self._config.registry)
        archive = object_name(release.digest)
        if await self._buckets.archives.info(archive) is None:
            raise LeftOut(f"its archive {archive} is not in the archive bucket")
        with tempfile.TemporaryDirectory(prefix="extension-resign-") as scratch:
            packed = Path(scratch, "archive.tar.gz")
            try:
                digest = await self._buckets.archives.fetch(archive, packed, max_bytes=limits.max_archive_bytes)
            except ArchiveTooLarge as exc:
                raise LeftOut(str(exc)) from None
            if digest != release.digest:
                raise LeftOut(f"its archive's digest is {digest}, not the {release.digest} signed")
            size = (await anyio.Path(packed).stat()).st_size
            target = Path(scratch, "root", kind.folder, name, release.version)
            try:
                await anyio.to_thread.run_sync(unpack, packed, target, limits)
                metadata = await anyio.to_thread.run_sync(read_metadata, target)
            except ArchiveRefused as exc:
                raise LeftOut(f"its archive would be refused by a loader: {exc.reason}") from None
            except PublishRefused as exc:
                raise LeftOut(f"its archive: {exc}") from None
            if (metadata.type, metadata.name, metadata.version) != (kind, name, release.version):
                raise LeftOut(f"its archive holds {metadata.type.value} {metadata.name} {metadata.version}")
            tree = await anyio.to_thread.run_sync(tree_digest, target)
        try:
            paths = self._config.extension_paths
            dependencies = await typed_dependencies(metadata.dependencies, kind, self._buckets, paths)
        except PublishRefused as exc:
            raise LeftOut(str(exc)) from None
        signed = ReleaseStatement(
            extension_type=kind,
            name=name,
            version=release.version,
            digest=release.digest,
            size=size,
            tree_digest=tree,
            dependencies=dependencies,
            description=metadata.description,
            author=metadata.author,
            repository=metadata.repository,
            published_at=release.published_at,
        )
        return release_copy(seal_release(signed, self._signer), signed, self._signer.public_key, release.yanked)

    async def record(
        self, record: IndexRecord, from_keys: Sequence[str], *, strict: bool = False
    ) -> tuple[IndexRecord | None, list[str], list[str]]:
        """The record with its old-format releases re-signed and a new state over them (None: nothing to do), the
        versions re-signed, and what was left out. A record with a state must have one this publisher trusts.
        `strict`: PublishRefused, saying to run `resign`, as soon as one release cannot be re-signed."""
        kind, name = record.extension_type, record.name
        if all(r.statement is not None for r in record.releases.values()):
            return None, [], []  # the new format already
        previous: StateStatement | None = None
        releases: dict[str, Release] = {}
        left_out: list[str] = []
        if record.state is not None:
            keys = allowed_keys(self._signer.public_key, self._config.registry.trusted, kind, name)
            previous = verified_state(record, keys)
            releases, left_out = listed_releases(record, previous)
        listed = previous.releases if previous is not None else {}
        old = [r for v, r in record.releases.items() if r.statement is None and v not in listed]
        resigned: list[str] = []
        for release in old:
            try:
                releases[release.version] = await self.release(record, release, from_keys)
                resigned.append(release.version)
            except LeftOut as exc:
                if strict:
                    raise PublishRefused(
                        f"{kind.value} {name} {release.version} is of the old format and cannot be carried over "
                        f"({exc}): re-sign the record first with `extension-loader resign --key FILE --from U...` "
                        "(the key that signed it), which leaves out what does not verify"
                    ) from None
                left_out.append(f"{kind.value} {name} {release.version}: {exc}")
        if not resigned:
            return None, [], left_out  # none of it is this publisher's to re-sign: the record is left alone
        yanked = [*(previous.yanked if previous is not None else ()), *(v for v in resigned if releases[v].yanked)]
        return seal_state(record, kind, name, previous, releases, yanked, self._signer), resigned, left_out


class _Unchanged(Exception):
    """Nothing to write for this record."""


async def resign(buckets: RegistryBuckets, signer: Signer, from_keys: Sequence[str], config: Config) -> list[Resigned]:
    """Every record with old-format releases, re-signed (see the module's docstring): what was done to each one
    that had any (a record left alone, in the new format already, is not listed)."""
    resigner = Resigner(buckets, signer, config)
    done: list[Resigned] = []
    for update in sorted(await buckets.index.entries(), key=lambda u: u.key):
        if update.key != TIMESTAMP_KEY and update.value is not None:
            outcome = await _resign_record(buckets, resigner, update.key, from_keys)
            if outcome is not None:
                done.append(outcome)
    return done


async def _resign_record(
    buckets: RegistryBuckets, resigner: Resigner, key: str, from_keys: Sequence[str]
) -> Resigned | None:
    last: tuple[list[str], list[str]] = ([], [])

    async def change(record: IndexRecord | None) -> IndexRecord:
        nonlocal last
        if record is None:
            raise _Unchanged
        updated, versions, left_out = await resigner.record(record, from_keys)
        last = (versions, left_out)
        if updated is None:
            raise _Unchanged
        return updated

    try:
        _, revision = await compare_and_set(buckets, key, change)
    except _Unchanged:
        return Resigned(key, (), tuple(last[1]), None) if last[1] else None
    except (PublishRefused, IndexRecordInvalid) as exc:
        return Resigned(key, (), (str(exc),), None)
    return Resigned(key, tuple(last[0]), tuple(last[1]), revision)
