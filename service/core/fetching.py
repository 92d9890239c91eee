"""Fetching a release: its archive downloaded, verified against the signed digest, and unpacked for a load.

A fetch downloads the archive to a temporary file, compares its sha256 with the signed digest, and only then
keeps it as `archives/<hex>.tar.gz` (content-addressed: a restart does not fetch it again) and unpacks it into
`trees/<hex>/<type>s/<name>/<version>`, the one root the Nushell loader is pointed at for that load. An archive
that is refused leaves no folder under `trees/`. Each refusal is written to the audit log.

What is unpacked is checked against the signed tree digest on every fetch, that is on every cold load: a tree
edited on this disk since it was unpacked is removed and unpacked again from the archive (itself checked again
against its digest), and never served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import msgspec

from ..contract.config import RegistryConfig
from ..contract.errors import InvalidExtension, Unavailable, UntrustedExtension
from ..registry.archive import ArchiveRefused, UnpackLimits, digest_file, unpack
from ..registry.errors import ArchiveTooLarge, RegistryUnavailable
from ..registry.index import Release
from . import audit
from .folders import METADATA, read_version, tree_digest
from .registry_access import RegistryAccess
from .trust import Trust
from .version_info import VersionInfo

# An archive up to this size is unpacked, and its tree and metadata.toml checked, on the event loop (well under a
# millisecond): on a busy machine the trip to a worker thread and back took longer than the work.
_SMALL_ARCHIVE = 64 * 1024

_T = TypeVar("_T")


async def _small_here(size: int, work: Callable[..., _T], *args: object) -> _T:
    """`work(*args)` on the event loop when `size` is small (`_SMALL_ARCHIVE`), else in a worker thread."""
    if size <= _SMALL_ARCHIVE:
        return work(*args)
    return await anyio.to_thread.run_sync(work, *args)


def unpack_limits(config: RegistryConfig) -> UnpackLimits:
    """The bounds of one archive, as configured: a publisher checks its archive against the same."""
    return UnpackLimits(
        max_archive_bytes=config.max_archive_mb * 2**20,
        max_unpacked_bytes=config.max_unpacked_mb * 2**20,
        max_files=config.max_files,
    )


class ReleaseFetcher:
    """The archives and unpacked trees under `folder`, and the fetches that fill them."""

    def __init__(self, config: RegistryConfig, folder: Path, trust: Trust, access: RegistryAccess) -> None:
        self.folder = folder
        self.limits = unpack_limits(config)
        self.fetched = 0  # archives downloaded
        self._timeout_s = config.timeout_s
        self._trust = trust
        self._access = access
        self._locks: dict[str, anyio.Lock] = {}  # per archive digest: one fetch and unpack at a time

    def tree(self, release: Release) -> Path:
        """The root a release is unpacked under, and loaded from."""
        return self.folder / "trees" / release.digest.removeprefix("sha256:")

    async def fetch(self, info: VersionInfo, release: Release) -> Path:
        """The root to load `info` from: its archive fetched (unless kept from before) and verified, then
        unpacked, and its `metadata.toml` found to say what the index says. `release` is the index's entry for
        it as it stands now. Raises UntrustedExtension (nothing unpacked, or what was unpacked removed),
        InvalidExtension for a signed archive that is not safe to unpack (nothing left of it under `trees/`), or
        Unavailable when the registry cannot be reached for an archive never fetched.

        The release must still be the one judged when the load chose it: a record changed in between (a bucket
        writer swapping in another archive) is refused, never unpacked into the folder of the release that was
        trusted. Loads of one archive take turns (a reload may overlap a load)."""
        folder = self.tree(release) / info.extension_type.folder / info.name / info.version
        if folder != info.path or self._trust.untrusted(info.extension_type, info.name, release) is not None:
            raise _refuse(info, release, "its index entry changed while it was being loaded; try again")
        async with self._lock(release.digest):
            if folder.is_dir() and (found := await self._tree_differs(release, folder)) is not None:
                audit.record(
                    "unpacked again", info.key, "EDITED", f"its tree on disk was {found}", digest=release.digest
                )
                await anyio.to_thread.run_sync(shutil.rmtree, folder)
            if not folder.is_dir():
                await self._fetch_and_unpack(info, release, folder)
                if (found := await self._tree_differs(release, folder)) is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                    self._prune(folder.parent)
                    raise _refuse(info, release, f"its unpacked tree is {found}, not the signed {release.tree_digest}")
            # Under the lock: an overlapping fetch of the release never finds the tree half removed.
            mismatch = await self._metadata_differs(info, folder)
            if mismatch is not None:
                shutil.rmtree(folder, ignore_errors=True)
                self._prune(folder.parent)
                raise _refuse(info, release, f"its index entry does not say what its signed archive says: {mismatch}")
        return self.tree(release)

    async def _tree_differs(self, release: Release, folder: Path) -> str | None:
        """The digest of the tree at `folder` when it is not the signed one; None when it is."""
        found = await _small_here(release.size, tree_digest, folder)
        return None if found == release.tree_digest else found

    async def _metadata_differs(self, info: VersionInfo, folder: Path) -> str | None:
        """What the unpacked `metadata.toml` says otherwise than the index; read on the event loop when it is
        small, as nearly every one is (the trip to a worker thread cost more than reading it)."""
        try:
            size = (folder / METADATA).stat().st_size
        except OSError:
            size = 0  # missing: said by the read
        return await _small_here(size, _metadata_mismatch, info, folder)

    def _archive(self, release: Release) -> Path:
        return self.folder / "archives" / (release.digest.removeprefix("sha256:") + ".tar.gz")

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
            digest = await _small_here(release.size, self._unpack, archive, folder, expected)
        except ArchiveRefused as exc:
            raise _broken(info, release, exc.reason) from None
        if digest is not None:
            archive.unlink(missing_ok=True)
            self._prune(folder.parent)  # the folders left of a tree removed as edited: a refusal leaves none
            raise _refuse(info, release, f"the kept archive's bytes are {digest}, not the signed {release.digest}")

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
        archives = self._access.archives()
        if archives is None:
            why = self._access.last_error or "not connected"
            raise Unavailable(f"the registry cannot be reached ({why}), and {info.key} was never fetched here")
        archive.parent.mkdir(parents=True, exist_ok=True)
        temporary = archive.with_name(f".{archive.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
        try:
            digest = await archives.fetch(
                release.object, temporary, max_bytes=self.limits.max_archive_bytes, timeout_s=self._timeout_s
            )
            if digest != release.digest:
                raise _refuse(info, release, f"its bytes are {digest}, not the signed {release.digest}")
            temporary.replace(archive)
        except ArchiveTooLarge as exc:
            raise _broken(info, release, str(exc)) from None
        except RegistryUnavailable as exc:
            site = self._access.mirror_stats() is not None
            hint = (
                "; at this edge site, more likely its mirrors do not hold it yet (they catch up on their own)"
                if site
                else ""
            )
            raise Unavailable(f"fetching {info.key} from the registry failed: {exc}{hint}") from None
        finally:
            temporary.unlink(missing_ok=True)
        self.fetched += 1
        audit.record("fetched", info.key, digest=release.digest, signer=release.signer)


def _metadata_mismatch(info: VersionInfo, folder: Path) -> str | None:
    """What the unpacked `metadata.toml` says otherwise than the index entry `info` was made from (the
    signature covers the archive, not the index's copy of its metadata, which a load's dependencies come from);
    None when they agree."""
    unpacked = read_version(info.extension_type, info.name, folder, info.version)
    if unpacked.metadata is None:
        return "; ".join(unpacked.problems) or "no metadata"
    indexed = msgspec.structs.asdict(info.metadata) if info.metadata is not None else {}
    fields = [
        k for k, v in msgspec.structs.asdict(unpacked.metadata).items() if k != "dependencies" and indexed.get(k) != v
    ]
    if not _same_dependencies(unpacked.metadata.dependencies, indexed.get("dependencies", ())):
        fields.append("dependencies")
    return f"{', '.join(fields)} differ" if fields else None


def _same_dependencies(written: Sequence[str], signed: Sequence[str]) -> bool:
    """Whether the dependencies signed (each with the type it was given when published: `taskserv:postgres@^16`)
    are those `metadata.toml` says, where an entry without a type may have been given any."""
    if len(written) != len(signed):
        return False
    return all(
        s == w or (":" not in w.split("@")[0] and s.partition(":")[2] == w)
        for w, s in zip(written, signed, strict=True)
    )


def _refuse(info: VersionInfo, release: Release, reason: str) -> UntrustedExtension:
    """A release this loader will not load: the caller counts it (`Releases.fetch`)."""
    error = UntrustedExtension(info.extension_type.value, info.name, info.version, reason, signer=release.signer)
    audit.record("refused", info.key, error.code, reason, digest=release.digest, signer=release.signer)
    return error


def _broken(info: VersionInfo, release: Release, reason: str) -> InvalidExtension:
    """A signed archive that is not a safe extension (a bomb, a path out of its folder, a link): the
    signature says who made it, not that it may be unpacked."""
    error = InvalidExtension(f"registry:{info.key}", [f"archive {release.digest}: {reason}"])
    audit.record("refused", info.key, error.code, reason, digest=release.digest, signer=release.signer)
    return error
