"""The bundle file: an extension registry's signed records and the archives they name, in one file carried to a
site that cannot reach the registry (`bundle export`: `bundle_export.py`; `bundle import`: `bundle_import.py`).

A bundle is an uncompressed tar (the archives in it are compressed already) whose bytes depend on what it holds
and nothing else: its members in a fixed order, each a regular file with time 0, owner and group 0, no owner or
group name, mode 0644. The same registry content gives the same bytes, so the same sha256, wherever and whenever
it is exported:

    bundle.json                 the manifest: the format (its version in its name), each record's index key with
                                its signed state's sequence, the archives by digest, whether a timestamp is in it
    records/<index key>.json    one per extension, in key order: the record as the index stores it, byte for byte
    timestamp.json              the index's signed timestamp as stored, when it has one
    archives/<hex>.tar.gz       one per archive the records' releases name, in digest order

Nothing read here is trusted: reading checks the bundle's shape only (the manifest first, naming every other
member and nothing else, each member a regular file of bounded size), and copies each archive out, hashing it.
Whether a site's pinned keys signed what it holds is `bundle_import.py`'s.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import msgspec
from msgspec import Meta, Struct

from ..registry.index import parse_index_key

FORMAT = "application/vnd.extension-loader.bundle.v1+json"
MANIFEST = "bundle.json"
TIMESTAMP = "timestamp.json"
_RECORD = re.compile(r"records/(?P<key>[-/_=.a-zA-Z0-9]+)\.json")
_ARCHIVE = re.compile(r"archives/(?P<hex>[0-9a-f]{64})\.tar\.gz")
_SMALL_LIMIT = 16 * 2**20  # a manifest, a record or the timestamp: far more than the index stores under one key
_BLOCK = 2**20


class BundleInvalid(Exception):
    """A file that is not a bundle this version reads (or cannot be read or written); the message says why."""


class BundleRefused(Exception):
    """A bundle (or an export) refused: something in it is not signed, not the bytes signed, too large, or would
    take a record back; the message names each thing and why."""


class Manifest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: str
    records: dict[str, Annotated[int, Meta(ge=1)]]  # index key -> its signed state's sequence
    archives: tuple[Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}\Z")], ...]  # sorted
    timestamp: bool = False


@dataclass(frozen=True, slots=True)
class Contents:
    """What goes into a bundle: records as stored (index key -> bytes) with their signed sequences, the timestamp as
    stored, and each archive's file by digest."""

    records: dict[str, bytes]
    sequences: dict[str, int]
    timestamp: bytes | None
    archives: dict[str, Path]


@dataclass(frozen=True, slots=True)
class Archive:
    """An archive copied out of a bundle: the file, its size, and the sha256 of its bytes as read."""

    path: Path
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle as read: its file's sha256, its manifest, its records and timestamp as stored, its archives by the
    digest their names claim."""

    sha256: str
    manifest: Manifest
    records: dict[str, bytes]
    timestamp: bytes | None
    archives: dict[str, Archive]


_encoder = msgspec.json.Encoder(order="deterministic")


def write(path: Path, contents: Contents) -> tuple[str, int]:
    """Writes the bundle (into a new file beside `path`, which then replaces it) and returns the sha256 of its bytes
    and their number. BundleInvalid when it cannot be written."""
    manifest = Manifest(
        format=FORMAT,
        records=dict(sorted(contents.sequences.items())),
        archives=tuple(sorted(contents.archives)),
        timestamp=contents.timestamp is not None,
    )
    try:
        folder = path.parent if str(path.parent) else Path(".")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", delete=False) as out:
            try:
                with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    _add(tar, MANIFEST, _encoder.encode(manifest))
                    for key in sorted(contents.records):
                        _add(tar, f"records/{key}.json", contents.records[key])
                    if contents.timestamp is not None:
                        _add(tar, TIMESTAMP, contents.timestamp)
                    for digest in manifest.archives:
                        with contents.archives[digest].open("rb") as archive:
                            size = os.fstat(archive.fileno()).st_size
                            tar.addfile(_info(f"archives/{_hex(digest)}.tar.gz", size), archive)
                out.flush()
                os.fsync(out.fileno())
                os.fchmod(out.fileno(), 0o644)  # what any loader may read: whoever carries it may read it too
            except BaseException:
                Path(out.name).unlink(missing_ok=True)
                raise
        os.replace(out.name, path)
    except OSError as exc:
        raise BundleInvalid(f"{path}: {exc.strerror or exc}") from None
    with path.open("rb") as written:
        return _sha256(written)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, 0, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def read(path: Path, scratch: Path, max_archive_bytes: int) -> Bundle:
    """The bundle at `path`, each archive copied into the folder `scratch`. BundleInvalid for a file that is not a
    bundle of this format; BundleRefused for an archive over `max_archive_bytes` (nothing of it is read)."""
    try:
        with path.open("rb") as file:
            sha256, _ = _sha256(file)
            file.seek(0)
            with tarfile.open(fileobj=file, mode="r:") as tar:
                return _members(tar, sha256, scratch, max_archive_bytes)
    except OSError as exc:
        raise BundleInvalid(f"{path}: {exc.strerror or exc}") from None
    except tarfile.TarError as exc:
        raise BundleInvalid(f"{path}: not a bundle (an uncompressed tar file): {exc}") from None


def _members(tar: tarfile.TarFile, sha256: str, scratch: Path, max_archive_bytes: int) -> Bundle:
    manifest: Manifest | None = None
    records: dict[str, bytes] = {}
    timestamp: bytes | None = None
    archives: dict[str, Archive] = {}
    seen: set[str] = set()
    for member in tar:
        name = member.name
        if name in seen:
            raise BundleInvalid(f"not a bundle: {name} is in it twice")
        seen.add(name)
        if not member.isreg():
            raise BundleInvalid(f"not a bundle: {name} is not a regular file")
        if manifest is None:
            if name != MANIFEST:
                raise BundleInvalid(f"not a bundle: its first member is {name}, not {MANIFEST}")
            manifest = _manifest(_small(tar, member))
            continue
        if (record := _RECORD.fullmatch(name)) is not None and record["key"] in manifest.records:
            records[record["key"]] = _small(tar, member)
        elif name == TIMESTAMP and manifest.timestamp:
            timestamp = _small(tar, member)
        elif (archive := _ARCHIVE.fullmatch(name)) is not None and f"sha256:{archive['hex']}" in manifest.archives:
            digest = f"sha256:{archive['hex']}"
            if member.size > max_archive_bytes:
                raise BundleRefused(
                    f"archive {digest} is {member.size} bytes, over registry.max_archive_mb "
                    f"({max_archive_bytes // 2**20} MiB): nothing was written"
                )
            archives[digest] = _copy(tar, member, scratch / f"{archive['hex']}.tar.gz")
        else:
            raise BundleInvalid(f"not a bundle: {name} is not named in its {MANIFEST}")
    if manifest is None:
        raise BundleInvalid(f"not a bundle: it has no {MANIFEST}")
    missing = [f"records/{k}.json" for k in manifest.records if k not in records]
    missing += [f"archives/{_hex(d)}.tar.gz" for d in manifest.archives if d not in archives]
    missing += [TIMESTAMP] if manifest.timestamp and timestamp is None else []
    if missing:
        raise BundleInvalid(f"not a whole bundle: {', '.join(missing)} named in its {MANIFEST} but not in it")
    return Bundle(sha256, manifest, records, timestamp, archives)


def _manifest(data: bytes) -> Manifest:
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise BundleInvalid(f"not a bundle: its {MANIFEST} is not a manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise BundleInvalid(f"a bundle of format {manifest.format!r}, which this version does not read ({FORMAT})")
    for key in manifest.records:
        try:
            parse_index_key(key)
        except ValueError as exc:
            raise BundleInvalid(f"not a bundle: its {MANIFEST} names a record {exc}") from None
    return manifest


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > _SMALL_LIMIT:
        raise BundleInvalid(f"not a bundle: {member.name} is {member.size} bytes, over {_SMALL_LIMIT}")
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    return source.read()


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path) -> Archive:
    source = tar.extractfile(member)
    assert source is not None
    sha = hashlib.sha256()
    size = 0
    with into.open("xb") as sink:
        while chunk := source.read(_BLOCK):
            sha.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    return Archive(into, size, "sha256:" + sha.hexdigest())


def _sha256(file: IO[bytes]) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    while chunk := file.read(_BLOCK):
        sha.update(chunk)
        size += len(chunk)
    return "sha256:" + sha.hexdigest(), size


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def described(key: str) -> str:
    """An index key as people read it, `taskserv vault`; the key itself when it names no extension."""
    try:
        extension_type, name = parse_index_key(key)
    except ValueError:
        return key
    return f"{extension_type.value} {name}"
