"""What one extension folder holds: its `metadata.toml` files read and checked, the times that tell whether
it changed, and the digest of its files.

Two layouts: `<root>/taskservs/kubernetes/1.28.0/metadata.toml` (a folder per version) and
`<root>/taskservs/containerd/metadata.toml` (one version, named in the file). Only `metadata.toml` is read
here; checking and copying an extension is the Nushell loader's work.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from ..contract.messages import NAME_PATTERN, ExtensionMetadata, ExtensionType
from .version_info import VersionInfo
from .versions import parse_version

METADATA = "metadata.toml"


class MetadataFile(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fields a `metadata.toml` may hold."""

    name: Annotated[str, Meta(pattern=NAME_PATTERN)]
    version: str
    description: str
    type: ExtensionType
    dependencies: tuple[str, ...] = ()
    author: str | None = None
    repository: str | None = None


def tree_digest(folder: Path) -> str:
    """The loader's digest of an extension folder: sha256 over `<relpath>\t<sha256 of the file>\n` lines,
    sorted by relative path (see service/runtime/nushell/provisioning.nu). Regular files only, and no symlink is
    followed: one could lead anywhere (the loader refuses an extension that has one)."""
    files: list[tuple[str, Path]] = []
    for top, _dirs, names in os.walk(folder, followlinks=False):
        for file in names:
            path = Path(top, file)
            if stat.S_ISREG(path.lstat().st_mode):
                files.append((path.relative_to(folder).as_posix(), path))
    text = "".join(f"{rel}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n" for rel, path in sorted(files))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def read_versions(extension_type: ExtensionType, name: str, folder: Path) -> dict[str, VersionInfo]:
    if folder.is_symlink():
        return {"unknown": _refused(extension_type, name, folder, "unknown")}
    single = folder / METADATA
    if _is_file(single):
        info = _read_one(extension_type, name, folder, version=None)
        return {info.version: info}
    out: dict[str, VersionInfo] = {}
    for entry in scandir(folder):
        if not parse_version(entry.name):
            continue
        if entry.is_symlink():
            out[entry.name] = _refused(extension_type, name, Path(entry.path), entry.name)
        elif _is_real_dir(entry) and _is_file(Path(entry.path) / METADATA):
            out[entry.name] = _read_one(extension_type, name, Path(entry.path), version=entry.name)
    return out


def _refused(extension_type: ExtensionType, name: str, folder: Path, version: str) -> VersionInfo:
    return VersionInfo(extension_type, name, version, folder, None, ("symlink not allowed: .",))


def read_version(extension_type: ExtensionType, name: str, folder: Path, version: str) -> VersionInfo:
    """One version's folder, read as the store reads it (`metadata` None and `problems` said where it is broken)."""
    return _read_one(extension_type, name, folder, version=version)


def _read_one(extension_type: ExtensionType, name: str, folder: Path, *, version: str | None) -> VersionInfo:
    problems: list[str] = []
    metadata: ExtensionMetadata | None = None
    try:
        raw = tomllib.loads((folder / METADATA).read_text(encoding="utf-8"))
        parsed = msgspec.convert(raw, MetadataFile)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{METADATA}: cannot read: {exc}")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{METADATA}: not valid TOML: {exc}")
    except msgspec.ValidationError as exc:
        problems.append(f"{METADATA}: {exc}")
    else:
        if parsed.type is not extension_type:
            problems.append(f"{METADATA}: type is {parsed.type.value!r}, but the folder holds {extension_type.folder}")
        if parsed.name != name:
            problems.append(f"{METADATA}: name is {parsed.name!r}, but the folder is {name!r}")
        if version is not None and parsed.version != version:
            problems.append(f"{METADATA}: version is {parsed.version!r}, but the folder is {version!r}")
        if parse_version(parsed.version) is None:
            problems.append(f"{METADATA}: version {parsed.version!r} is not a semantic version")
        if not problems:
            metadata = ExtensionMetadata(
                name=parsed.name,
                version=parsed.version,
                description=parsed.description,
                extension_type=parsed.type,
                dependencies=parsed.dependencies,
                author=parsed.author,
                repository=parsed.repository,
            )
        if version is None and parse_version(parsed.version):
            version = parsed.version
    return VersionInfo(extension_type, name, version or "unknown", folder, metadata, tuple(problems))


def scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)


def is_folder_or_link(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False) or entry.is_symlink()


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def mtime(path: Path | str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def tree_stamp(folder: Path) -> tuple[int, ...]:
    """Changes when a version folder is added or removed, or a metadata file is changed. Plain strings and
    os.scandir, not Path objects: on a tree of thousands of extensions, building paths cost more than stat."""
    top = str(folder)
    parts = [mtime(top), mtime(os.path.join(top, METADATA))]
    try:
        with os.scandir(top) as entries:
            subfolders = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        subfolders = []
    parts.extend(mtime(os.path.join(path, METADATA)) for path in subfolders)
    return tuple(parts)
