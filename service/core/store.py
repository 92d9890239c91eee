"""The extension store: what is on disk and which version a request means.

Extension roots are searched in order; the first root that has a type and name wins. Two layouts:
`<root>/taskservs/kubernetes/1.28.0/metadata.toml` (a folder per version) and
`<root>/taskservs/containerd/metadata.toml` (one version, named in the file). The store reads only
`metadata.toml` files; checking and copying an extension is the Nushell loader's work, and what an extension
depends on is `dependencies.py`'s. With a registry (`registry`, a `RegistryView`), its versions are merged in:
a name's versions are those of the disk and of the registry together, and where both have one version the
disk's wins (the operator's own copy, there without a network; see the README, "Registry"). Reads are cached
by the folders' and files' modification times, so repeated requests do not rescan a tree that did not change,
and the whole listing that `discover` answers with is kept until something in it changes.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
import time
import tomllib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta, Struct

from ..contract.errors import InvalidExtension, NotFound, UntrustedExtension, VersionNotFound
from ..contract.messages import NAME_PATTERN, Available, ExtensionMetadata, ExtensionType, Source, VersionSource
from .slices import Steps, deadline, drain
from .versions import Constraint, parse_version, sort_newest_first

METADATA = "metadata.toml"
_NAME = re.compile(NAME_PATTERN)


class MetadataFile(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fields a `metadata.toml` may hold."""

    name: Annotated[str, Meta(pattern=NAME_PATTERN)]
    version: str
    description: str
    type: ExtensionType
    dependencies: tuple[str, ...] = ()
    author: str | None = None
    repository: str | None = None


def cache_key(extension_type: ExtensionType, name: str, version: str) -> str:
    """`{type}:{name}:{version}`: the key of the cache, and the id of a graph node."""
    return ":".join((extension_type, name, version))  # a StrEnum is its value; join is the cheapest spelling


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of one extension, on disk or in the registry; `metadata` is None where the file is broken.

    A registry version's `path` is where it is unpacked once fetched; it is `yanked` as its publisher said, and
    `untrusted` (the reason) when this instance does not trust its signer or signature. Only a version that is
    neither is `choosable` by a constraint; an exact pin still loads a yanked one."""

    extension_type: ExtensionType
    name: str
    version: str
    path: Path
    metadata: ExtensionMetadata | None
    problems: tuple[str, ...] = ()
    source: Source = "disk"
    yanked: bool = False
    untrusted: str | None = None
    signer: str | None = None

    @property
    def key(self) -> str:
        return cache_key(self.extension_type, self.name, self.version)

    @property
    def choosable(self) -> bool:
        return not self.yanked and self.untrusted is None

    def require_metadata(self) -> ExtensionMetadata:
        if self.metadata is None:
            raise InvalidExtension(str(self.path), self.problems)
        return self.metadata

    def require_trusted(self) -> None:
        if self.untrusted is not None:
            raise UntrustedExtension(
                self.extension_type.value, self.name, self.version, self.untrusted, signer=self.signer
            )


class RegistryView(Protocol):
    """The registry's versions as the store merges them with the disk's (see `releases.py`)."""

    @property
    def change_count(self) -> int:
        """Grows whenever what the view holds changes."""
        ...

    def names(self, extension_type: ExtensionType) -> Collection[str]: ...

    def versions(self, extension_type: ExtensionType, name: str) -> dict[str, VersionInfo]: ...


# A folder time this close to when it was read may be shared by a change made just after the read (a file
# system's clock ticks coarsely): until it is older than this, the folder's time alone is not trusted.
_RACY_NS = 1_000_000_000


_Key = tuple[ExtensionType, str]


@dataclass(slots=True)
class _NameEntry:
    stamp: tuple[int, ...]  # _tree_stamp: the name folder's own time first
    versions: dict[str, VersionInfo]
    listed: Available | None  # what discover lists for it; None when no version is loadable
    settled: bool  # the name folder's time is old enough to tell every later change (_RACY_NS)


class ExtensionStore:
    """What the extension roots hold. Unwatched, a read of one extension checks its modification times (a few
    `stat` calls); while a watcher is attached (`watched`), reads trust what they read last until the watcher
    says what changed (`invalidate`), so a large tree is not stat'ed on every discover.

    The listing (`available()` without a name) is kept per type with the type's generation, which grows
    whenever what the store knows of that type changes: a discover of a tree that did not change gets the very
    same tuple back. Unwatched, it looks for changes by folder times only (one `stat` a name: a version or a
    name that came or went); a `metadata.toml` edited in place shows there once a load, status or graph of that
    extension has read it again, or at once with a watcher.

    `listing()` makes it a slice at a time (see `slices`), and the watcher may invalidate between two slices:
    every change is made first and counted after, and a listing is kept under the generation read before it
    was built, so a listing that overlapped a change is never served as current."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(roots)
        self.registry: RegistryView | None = None
        self.watched = False
        self._epoch = 0  # grows with every invalidation: a scan that overlapped one does not keep its result
        self._names: dict[ExtensionType, tuple[tuple[int, ...], dict[str, Path]]] = {}
        self._entries: dict[tuple[ExtensionType, str], _NameEntry] = {}
        self._generations: dict[ExtensionType, int] = dict.fromkeys(ExtensionType, 0)
        self._listings: dict[ExtensionType | None, tuple[tuple[int, ...], tuple[Available, ...]]] = {}
        # per type, for the names dict it was made from: (key, folder as a string, name, folder) of each name
        self._prepared: dict[ExtensionType, tuple[dict[str, Path], list[tuple[_Key, str, str, Path]]]] = {}

    def invalidate(self, extension_type: ExtensionType, name: str | None = None) -> None:
        """Forgets what was read of one extension (or of a whole type), so the next read looks again."""
        self._epoch += 1
        self._names.pop(extension_type, None)
        if name is None:
            for key in [k for k in self._entries if k[0] is extension_type]:
                del self._entries[key]
        else:
            self._entries.pop((extension_type, name), None)
        self._changed(extension_type)

    # --- what is there ---

    def names(self, extension_type: ExtensionType) -> dict[str, Path]:
        """Every extension name of a type, with the folder of the root that wins for it."""
        cached = self._names.get(extension_type)
        if cached is not None and self.watched:
            return cached[1]
        epoch = self._epoch
        folders = [root / extension_type.folder for root in self.roots]
        stamp = tuple(_mtime(f) for f in folders)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found: dict[str, Path] = {}
        for folder in folders:
            for entry in _scandir(folder):
                # A symlinked folder claims its name too (the first root wins), and is then refused as a whole,
                # as the loader refuses it: it never lets a later root's folder of that name through.
                if entry.name not in found and _NAME.match(entry.name) and _is_folder_or_link(entry):
                    found[entry.name] = Path(entry.path)
        if self._epoch == epoch:
            self._names[extension_type] = (stamp, found)
            if cached is None or cached[1] != found:
                self._changed(extension_type)
        return found

    def versions(
        self, extension_type: ExtensionType, name: str, *, names: dict[str, Path] | None = None
    ) -> dict[str, VersionInfo]:
        folder = (names if names is not None else self.names(extension_type)).get(name)
        published = self.registry.versions(extension_type, name) if self.registry is not None else {}
        if folder is None:
            if not published:
                raise NotFound(extension_type.value, name, self.suggest(extension_type, name))
            return published
        on_disk = self._entry(extension_type, name, folder).versions
        return {**published, **on_disk} if published else on_disk

    def has(self, extension_type: ExtensionType, name: str) -> bool:
        """Whether an extension of that type and name is on disk or in the registry."""
        return name in self.names(extension_type) or (
            self.registry is not None and name in self.registry.names(extension_type)
        )

    def _entry(self, extension_type: ExtensionType, name: str, folder: Path) -> _NameEntry:
        key = (extension_type, name)
        cached = self._entries.get(key)
        if cached is not None and self.watched:
            return cached
        epoch = self._epoch
        now = time.time_ns()
        stamp = _tree_stamp(folder)
        if cached is None or cached.stamp != stamp:
            versions = _read_versions(extension_type, name, folder)
            listed = _listed(extension_type, name, versions)
            cached = _NameEntry(stamp, versions, listed, settled=now - stamp[0] > _RACY_NS)
            if self._epoch == epoch:
                self._entries[key] = cached
                self._changed(extension_type)
        elif not cached.settled:
            cached.settled = now - stamp[0] > _RACY_NS
        return cached

    def _changed(self, extension_type: ExtensionType) -> None:
        self._generations[extension_type] += 1

    def suggest(self, extension_type: ExtensionType, name: str) -> list[str]:
        return _close(name, self._all_names(extension_type))

    def _all_names(self, extension_type: ExtensionType) -> set[str]:
        names = set(self.names(extension_type))
        if self.registry is not None:
            names.update(self.registry.names(extension_type))
        return names

    def resolve(self, extension_type: ExtensionType, name: str, constraint: Constraint) -> VersionInfo:
        """The version a request means: the best that a constraint may choose; an exact version as asked, even
        yanked; an untrusted registry version only to say why it is refused (`require_trusted`)."""
        versions = self.versions(extension_type, name)
        best = constraint.best(v for v, info in versions.items() if info.choosable)
        if best is not None:
            return versions[best]
        exact = versions.get(constraint.text)
        if exact is not None and constraint.matches(exact.version):
            return exact
        refused = constraint.best(v for v, info in versions.items() if info.untrusted is not None)
        if refused is not None:
            return versions[refused]
        unreadable = [v for v in versions.values() if parse_version(v.version) is None]
        if unreadable and len(unreadable) == len(versions):
            raise InvalidExtension(str(unreadable[0].path), unreadable[0].problems)
        choosable = sort_newest_first(v for v, info in versions.items() if info.choosable)
        raise VersionNotFound(extension_type.value, name, constraint.text, choosable)

    def available(self, extension_type: ExtensionType | None = None, name: str | None = None) -> tuple[Available, ...]:
        """What can be loaded: broken extensions and versions are left out, so one does not hide the rest.
        Without a name, the listing: the same tuple for as long as nothing in it changed."""
        if name is None:
            return drain(self.listing(extension_type))
        types = [extension_type] if extension_type else list(ExtensionType)
        out: list[Available] = []
        for t in types:
            known = self.names(t)
            published = self.registry.versions(t, name) if self.registry is not None else {}
            if name not in known:
                listed = _listed(t, name, published) if published else None
                if listed is not None:
                    out.append(listed)
                continue
            entry = self._entry(t, name, known[name])
            if not entry.versions and not published:
                continue  # a folder with no version in it offers nothing, as in the listing
            listed = _listed(t, name, {**published, **entry.versions}) if published else entry.listed
            if listed is None:
                first = next(iter(entry.versions.values()))
                raise InvalidExtension(str(first.path), first.problems)
            out.append(listed)
        if not out:
            everything = sorted({n for t in types for n in self._all_names(t)} - {name})
            kind = extension_type.value if extension_type else "extension"
            raise NotFound(kind, name, _close(name, everything))
        return tuple(out)

    def listing(self, extension_type: ExtensionType | None = None) -> Steps[tuple[Available, ...]]:
        """What `available()` without a name answers, as a step function (see `slices`): on a tree of
        thousands, checking every name and building the listing is many slices of work."""
        types = [extension_type] if extension_type else list(ExtensionType)
        known: dict[ExtensionType, dict[str, Path]] = {}
        for t in types:
            known[t] = yield from self._look(t)
        registry = self.registry
        generation = (*(self._generations[t] for t in types), registry.change_count if registry is not None else 0)
        cached = self._listings.get(extension_type)
        if cached is not None and cached[0] == generation:
            return cached[1]
        out: list[Available] = []
        until = deadline()
        for t in types:
            published = set(registry.names(t)) if registry is not None else set()
            for n in sorted(published.union(known[t]) if published else known[t]):
                listed: Available | None
                if n in published:
                    assert registry is not None
                    on_disk = self._entry(t, n, known[t][n]).versions if n in known[t] else {}
                    listed = _listed(t, n, {**registry.versions(t, n), **on_disk})
                else:
                    entry = self._entries.get((t, n)) or self._entry(t, n, known[t][n])  # gone: invalidated since
                    listed = entry.listed
                if listed is not None:
                    out.append(listed)
                if time.perf_counter() > until:
                    yield
                    until = deadline()
        listing = tuple(out)
        self._listings[extension_type] = (generation, listing)
        return listing

    def _look(self, extension_type: ExtensionType) -> Steps[dict[str, Path]]:
        """The names of a type, every one of them read, and checked in full where the folder's time changed or
        is too recent to tell. The one loop that runs over every name on every discover: prepared keys and
        path strings, plain os.stat, no helpers."""
        known = self.names(extension_type)
        prepared = self._prepared.get(extension_type)
        if prepared is None or prepared[0] is not known:
            prepared = (known, [((extension_type, n), os.fspath(f), n, f) for n, f in known.items()])
            self._prepared[extension_type] = prepared
        entries, stat, clock = self._entries, os.stat, time.perf_counter
        until = deadline()
        for key, path, n, folder in prepared[1]:
            if clock() > until:
                yield
                until = deadline()
            entry = entries.get(key)
            if entry is not None:
                if self.watched:
                    continue
                try:
                    if entry.settled and stat(path).st_mtime_ns == entry.stamp[0]:
                        continue
                except OSError:
                    pass
            self._entry(extension_type, n, folder)
        return known


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


def _close(name: str, names: Iterable[str]) -> list[str]:
    """Up to three names close to `name`. Names of very different length cannot be close: leaving them out
    first keeps this quick on a tree of thousands."""
    reach = max(3, len(name) // 2)
    return difflib.get_close_matches(name, [n for n in names if abs(len(n) - len(name)) <= reach], n=3, cutoff=0.6)


def _listed(extension_type: ExtensionType, name: str, versions: dict[str, VersionInfo]) -> Available | None:
    readable = sort_newest_first(v for v, info in versions.items() if info.metadata is not None)
    if not readable:
        return None
    good = [v for v in readable if versions[v].choosable]
    # Only pre-releases: none of them is latest (a load must name one), but each stays listed.
    latest = Constraint.parse(None).best(good)
    latest_meta = versions[latest].require_metadata() if latest is not None else None
    # Only where the registry has a part: a name whose versions are all on disk lists none (omitted from the
    # reply), so a large tree's discover stays the size it was.
    plain = all(versions[v].source == "disk" for v in readable)
    sources = (
        ()
        if plain
        else tuple(
            VersionSource(
                version=v,
                source=versions[v].source,
                yanked=versions[v].yanked,
                trusted=versions[v].untrusted is None,
            )
            for v in readable
        )
    )
    return Available(
        extension_type=extension_type, name=name, versions=tuple(good), latest=latest_meta, sources=sources
    )


def _read_versions(extension_type: ExtensionType, name: str, folder: Path) -> dict[str, VersionInfo]:
    if folder.is_symlink():
        return {"unknown": _refused(extension_type, name, folder, "unknown")}
    single = folder / METADATA
    if _is_file(single):
        info = _read_one(extension_type, name, folder, version=None)
        return {info.version: info}
    out: dict[str, VersionInfo] = {}
    for entry in _scandir(folder):
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


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False)


def _is_folder_or_link(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir(follow_symlinks=False) or entry.is_symlink()


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _mtime(path: Path | str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _tree_stamp(folder: Path) -> tuple[int, ...]:
    """Changes when a version folder is added or removed, or a metadata file is changed. Plain strings and
    os.scandir, not Path objects: on a tree of thousands of extensions, building paths cost more than stat."""
    top = str(folder)
    parts = [_mtime(top), _mtime(os.path.join(top, METADATA))]
    try:
        with os.scandir(top) as entries:
            subfolders = sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        subfolders = []
    parts.extend(_mtime(os.path.join(path, METADATA)) for path in subfolders)
    return tuple(parts)
