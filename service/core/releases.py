"""The registry's releases as this loader sees them: what is published, what it trusts, what it has fetched.

The index (one record per extension, from the Key-Value bucket) is held in memory, fed by the watch
(`wire/registry.py`), and saved to `<cache_dir>/.registry/index.json` after each change, so a loader started
without JetStream still knows the versions it fetched before. A release is trusted when its signer is one of
the keys pinned in this loader's configuration (allowed for its type and name) and its signature verifies over
the statement of its type, name, version and archive digest (`registry/signing.py`): checked here, on every
record read, whether it came from the bucket or from the saved file, and never with a key from the registry.

A fetch downloads the archive to a temporary file, compares its sha256 with the signed digest, and only then
keeps it as `archives/<hex>.tar.gz` (content-addressed: a restart does not fetch it again) and unpacks it into
`trees/<hex>/<type>s/<name>/<version>`, the one root the Nushell loader is pointed at for that load. An archive
that is refused leaves no folder under `trees/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from ..contract.config import RegistryConfig, TrustedKey
from ..contract.errors import InvalidExtension, Unavailable, UntrustedExtension
from ..contract.messages import ExtensionMetadata, ExtensionType, RegistryStats
from ..registry import signing
from ..registry.archive import ArchiveRefused, UnpackLimits, digest_file, unpack
from ..registry.buckets import RegistryBuckets
from ..registry.errors import ArchiveTooLarge, RegistryUnavailable
from ..registry.index import IndexRecord, IndexRecordInvalid, Release, decode_record, parse_index_key
from . import audit
from .store import VersionInfo, read_version

log = logging.getLogger(__name__)

_Name = tuple[ExtensionType, str]
# An archive up to this size is unpacked on the event loop (well under a millisecond): on a busy machine the trip
# to a worker thread and back took longer than the work.
_SMALL_ARCHIVE = 64 * 1024


@dataclass(slots=True)
class Changes:
    """What one index update changed, in the terms the cache cares about."""

    published: list[VersionInfo] = field(default_factory=list)  # new releases
    yanked: list[VersionInfo] = field(default_factory=list)
    restored: list[VersionInfo] = field(default_factory=list)  # yanks undone
    withdrawn: list[VersionInfo] = field(default_factory=list)  # gone from the index altogether

    def __bool__(self) -> bool:
        return bool(self.published or self.yanked or self.restored or self.withdrawn)

    def extend(self, other: Changes) -> None:
        self.published += other.published
        self.yanked += other.yanked
        self.restored += other.restored
        self.withdrawn += other.withdrawn


def _metadata_mismatch(info: VersionInfo, folder: Path) -> str | None:
    """What the unpacked `metadata.toml` says otherwise than the index entry `info` was made from (the
    signature covers the archive, not the index's copy of its metadata, which a load's dependencies come from);
    None when they agree."""
    unpacked = read_version(info.extension_type, info.name, folder, info.version)
    if unpacked.metadata is None:
        return "; ".join(unpacked.problems) or "no metadata"
    if unpacked.metadata != info.metadata:
        indexed = msgspec.structs.asdict(info.metadata) if info.metadata is not None else {}
        fields = [k for k, v in msgspec.structs.asdict(unpacked.metadata).items() if indexed.get(k) != v]
        return f"{', '.join(fields)} differ"
    return None


def unpack_limits(config: RegistryConfig) -> UnpackLimits:
    """The bounds of one archive, as configured: a publisher checks its archive against the same."""
    return UnpackLimits(
        max_archive_bytes=config.max_archive_mb * 2**20,
        max_unpacked_bytes=config.max_unpacked_mb * 2**20,
        max_files=config.max_files,
    )


class _Snapshot(msgspec.Struct, frozen=True):
    records: tuple[IndexRecord, ...]


class Releases:
    """The store's `RegistryView`, and the fetcher of what it lists."""

    def __init__(self, config: RegistryConfig, folder: Path) -> None:
        self.config = config
        self.folder = folder
        self.buckets: RegistryBuckets | None = None  # set once the buckets are open; kept across reconnects
        self.reachable = False
        self.last_error: str | None = None
        self.fetched = 0
        self.refused = 0
        self.first_reading = True  # no index read before, from the bucket or the saved copy
        self._records: dict[_Name, IndexRecord] = {}
        self._views: dict[_Name, dict[str, VersionInfo]] = {}
        self._names: dict[ExtensionType, set[str]] = {t: set() for t in ExtensionType}
        self._change_count = 0
        self._locks: dict[str, anyio.Lock] = {}  # per archive digest: one fetch and unpack at a time
        self._trust: dict[tuple[str, str, str, str, str, str], str | None] = {}
        self.limits = unpack_limits(config)

    # --- what the store reads ---

    @property
    def change_count(self) -> int:
        """How many times what this view holds has changed."""
        return self._change_count

    def names(self, extension_type: ExtensionType) -> Collection[str]:
        return self._names[extension_type]

    def versions(self, extension_type: ExtensionType, name: str) -> dict[str, VersionInfo]:
        return self._views.get((extension_type, name), {})

    def counts(self) -> tuple[int, int]:
        """Extensions and versions in the index as last read."""
        return len(self._records), sum(len(r.releases) for r in self._records.values())

    def stats(self) -> RegistryStats:
        extensions, versions = self.counts()
        return RegistryStats(
            reachable=self.reachable,
            extensions=extensions,
            versions=versions,
            fetched=self.fetched,
            refused=self.refused,
            auto_update=self.config.auto_update,
            last_error=self.last_error,
        )

    # --- the index ---

    def apply(self, key: str, value: bytes | None) -> Changes:
        """One record as the bucket holds it now (None: deleted). A record that cannot be read is logged and
        leaves what was known of that extension as it was."""
        try:
            extension_type, name = parse_index_key(key)
        except ValueError:
            log.warning("registry index: ignoring key %r, which names no extension", key)
            return Changes()
        if value is None:
            return self._set((extension_type, name), None)
        try:
            record = decode_record(value)
        except IndexRecordInvalid as exc:
            log.warning("registry index: the record of %s %s cannot be read: %s", extension_type.value, name, exc)
            return Changes()
        if (record.extension_type, record.name) != (extension_type, name):
            log.warning("registry index: key %r holds the record of %s %s", key, record.extension_type, record.name)
            return Changes()
        return self._set((extension_type, name), record)

    def replace(self, entries: Iterable[tuple[str, bytes | None]]) -> Changes:
        """The whole index as read anew (a watch (re)started): what is not in it any more is withdrawn."""
        changes = Changes()
        seen: set[_Name] = set()
        for key, value in entries:
            with contextlib.suppress(ValueError):
                seen.add(parse_index_key(key))
            changes.extend(self.apply(key, value))
        for gone in [n for n in self._records if n not in seen]:
            changes.extend(self._set(gone, None))
        return changes

    def _set(self, name: _Name, record: IndexRecord | None) -> Changes:
        before = self._views.get(name, {})
        if record is None:
            self._records.pop(name, None)
            self._views.pop(name, None)
            self._names[name[0]].discard(name[1])
        else:
            self._records[name] = record
            self._views[name] = {v: self._info(record, r) for v, r in record.releases.items()}
            self._names[name[0]].add(name[1])
        after = self._views.get(name, {})
        changes = Changes(
            published=[i for v, i in after.items() if v not in before],
            yanked=[i for v, i in after.items() if v in before and i.yanked and not before[v].yanked],
            restored=[i for v, i in after.items() if v in before and not i.yanked and before[v].yanked],
            withdrawn=[i for v, i in before.items() if v not in after],
        )
        if changes or before.keys() != after.keys() or record is not None:
            self._change_count += 1
        return changes

    def _info(self, record: IndexRecord, release: Release) -> VersionInfo:
        extension_type, name = record.extension_type, record.name
        metadata = ExtensionMetadata(
            name=name,
            version=release.version,
            description=release.description,
            extension_type=extension_type,
            dependencies=tuple(release.dependencies),
            author=release.author,
            repository=release.repository,
        )
        return VersionInfo(
            extension_type,
            name,
            release.version,
            self._tree(release) / extension_type.folder / name / release.version,
            metadata,
            source="registry",
            yanked=release.yanked,
            untrusted=self._untrusted(extension_type, name, release),
            signer=release.signer,
        )

    def _untrusted(self, extension_type: ExtensionType, name: str, release: Release) -> str | None:
        """Why this release is not trusted here; None when it is."""
        key = (extension_type.value, name, release.version, release.digest, release.signer, release.signature)
        if key not in self._trust:
            self._trust[key] = self._judge(extension_type, name, release)
        return self._trust[key]

    def _judge(self, extension_type: ExtensionType, name: str, release: Release) -> str | None:
        pinned = [t for t in self.config.trusted if t.key == release.signer]
        if not pinned:
            return f"its signer {release.signer or '(none)'} is not one of the keys this loader trusts"
        if not any(t.allows(extension_type.value, name) for t in pinned):
            limits = " or ".join(_limits(t) for t in pinned)
            return (
                f"its signer {release.signer} is trusted here only for {limits}, not for {extension_type.value} {name}"
            )
        statement = signing.statement(extension_type.value, name, release.version, release.digest)
        if not release.signature or not signing.verify(release.signer, statement, release.signature):
            return "its signature does not verify"
        return None

    # --- the saved copy ---

    @property
    def _snapshot(self) -> Path:
        return self.folder / "index.json"

    def save(self) -> None:
        """Keeps the index as known now, for a start without JetStream. Written whole, then renamed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        body = msgspec.json.encode(_Snapshot(tuple(self._records[n] for n in sorted(self._records))))
        temporary = self._snapshot.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(body)
        temporary.replace(self._snapshot)

    def restore(self) -> None:
        """Reads the saved index, if any: each release is judged again, as if it came from the bucket."""
        try:
            snapshot = msgspec.json.decode(self._snapshot.read_bytes(), type=_Snapshot)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("registry: the saved index %s cannot be read (%s); starting without it", self._snapshot, exc)
            return
        for record in snapshot.records:
            self._set((record.extension_type, record.name), record)
        self.first_reading = False

    # --- fetching ---

    def _tree(self, release: Release) -> Path:
        return self.folder / "trees" / release.digest.removeprefix("sha256:")

    def _archive(self, release: Release) -> Path:
        return self.folder / "archives" / (release.digest.removeprefix("sha256:") + ".tar.gz")

    def _current(self, info: VersionInfo) -> Release:
        """The index's entry for `info` as it stands now."""
        record = self._records.get((info.extension_type, info.name))
        release = record.releases.get(info.version) if record is not None else None
        if release is None:
            raise Unavailable(f"{info.key} is no longer in the registry's index")
        return release

    async def fetch(self, info: VersionInfo) -> Path:
        """The root to load `info` from: its archive fetched (unless kept from before) and verified, then
        unpacked, and its `metadata.toml` found to say what the index says. Raises UntrustedExtension (nothing
        unpacked, or what was unpacked removed), InvalidExtension for a signed archive that is not safe to unpack
        (nothing left of it under `trees/`), or Unavailable when the registry cannot be reached for an archive
        never fetched.

        The release is read again here, and must still be the one judged when the load chose it: a record
        changed in between (a bucket writer swapping in another archive) is refused, never unpacked into the
        folder of the release that was trusted. Loads of one archive take turns (a reload may overlap a load)."""
        info.require_trusted()
        release = self._current(info)
        folder = self._tree(release) / info.extension_type.folder / info.name / info.version
        if folder != info.path or self._untrusted(info.extension_type, info.name, release) is not None:
            raise self._refuse(info, release, "its index entry changed while it was being loaded; try again")
        async with self._lock(release.digest):
            if not folder.is_dir():
                await self._fetch_and_unpack(info, release, folder)
        mismatch = await anyio.to_thread.run_sync(_metadata_mismatch, info, folder)
        if mismatch is not None:
            shutil.rmtree(folder, ignore_errors=True)
            self._prune(folder.parent)
            raise self._refuse(info, release, f"its index entry does not say what its signed archive says: {mismatch}")
        return self._tree(release)

    def _lock(self, digest: str) -> anyio.Lock:
        lock = self._locks.get(digest)
        if lock is None:
            lock = self._locks[digest] = anyio.Lock()
        return lock

    async def _fetch_and_unpack(self, info: VersionInfo, release: Release, folder: Path) -> None:
        archive = self._archive(release)
        kept = archive.is_file()
        if not kept:
            await self._download(info, release, archive)  # its bytes are checked against the digest on the way
        try:
            # One trip to a worker thread: a kept archive checked again (it may have changed on this disk), then
            # the archive unpacked.
            expected = release.digest if kept else None
            if release.size <= _SMALL_ARCHIVE:
                digest = self._unpack(archive, folder, expected)
            else:
                digest = await anyio.to_thread.run_sync(self._unpack, archive, folder, expected)
        except ArchiveRefused as exc:
            raise self._broken(info, release, exc.reason) from None
        if digest is not None:
            archive.unlink(missing_ok=True)
            raise self._refuse(info, release, f"the kept archive's bytes are {digest}, not the signed {release.digest}")

    def _unpack(self, archive: Path, folder: Path, expected: str | None) -> str | None:
        """Unpacks the archive into `folder`, after checking that it holds the `expected` digest where one is
        given; returns the digest it holds instead when that differs (then nothing is unpacked), else None."""
        if expected is not None:
            digest = digest_file(archive)
            if digest != expected:
                return digest
        if folder.is_dir():  # another load unpacked it meanwhile
            return None
        try:
            with contextlib.suppress(FileExistsError):
                unpack(archive, folder, self.limits)
        except ArchiveRefused:
            self._prune(folder.parent)  # the folders `unpack` made for it: a refused tree leaves no skeleton
            raise
        return None

    def _prune(self, folder: Path) -> None:
        """Removes `folder` and its parents below `trees/` while they are empty."""
        trees = self.folder / "trees"
        while folder != trees and folder.is_relative_to(trees):
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): what is there is another load's
                return
            folder = folder.parent

    async def _download(self, info: VersionInfo, release: Release, archive: Path) -> None:
        buckets = self.buckets
        if buckets is None or not self.reachable:
            why = self.last_error or "not connected"
            raise Unavailable(f"the registry cannot be reached ({why}), and {info.key} was never fetched here")
        archive.parent.mkdir(parents=True, exist_ok=True)
        temporary = archive.with_name(f".{archive.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
        try:
            digest = await buckets.archives.fetch(
                release.object, temporary, max_bytes=self.limits.max_archive_bytes, timeout_s=self.config.timeout_s
            )
            if digest != release.digest:
                raise self._refuse(info, release, f"its bytes are {digest}, not the signed {release.digest}")
            temporary.replace(archive)
        except ArchiveTooLarge as exc:
            raise self._broken(info, release, str(exc)) from None
        except RegistryUnavailable as exc:
            raise Unavailable(f"fetching {info.key} from the registry failed: {exc}") from None
        finally:
            temporary.unlink(missing_ok=True)
        self.fetched += 1
        audit.record("fetched", info.key, digest=release.digest, signer=release.signer)

    def _refuse(self, info: VersionInfo, release: Release, reason: str) -> UntrustedExtension:
        self.refused += 1
        error = UntrustedExtension(info.extension_type.value, info.name, info.version, reason, signer=release.signer)
        audit.record("refused", info.key, error.code, reason, digest=release.digest, signer=release.signer)
        return error

    def _broken(self, info: VersionInfo, release: Release, reason: str) -> InvalidExtension:
        """A signed archive that is not a safe extension (a bomb, a path out of its folder, a link): the
        signature says who made it, not that it may be unpacked."""
        error = InvalidExtension(f"registry:{info.key}", [f"archive {release.digest}: {reason}"])
        audit.record("refused", info.key, error.code, reason, digest=release.digest, signer=release.signer)
        return error


def _limits(trusted: TrustedKey) -> str:
    """What one pinned key is limited to, as its `[[registry.trusted]]` entry says: "types a and names b, c"."""
    kinds = (("types", trusted.types), ("names", trusted.names))
    return " and ".join(f"{kind} {', '.join(values)}" for kind, values in kinds if values)
