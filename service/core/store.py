"""The extension store: what is on disk and which version a request means.

Extension roots are searched in order; the first root that has a type and name wins (`folders.py` reads one
extension's folder; what an extension depends on is `dependencies.py`'s). With the registry's releases
(`releases`, a `ReleasesView`, given when the store is built), their versions are merged in:
a name's versions are those of the disk and of the registry together, and where both have one version the
disk's wins (the operator's own copy, there without a network; see the README, "Registry"). Reads are cached
by the folders' and files' modification times, so repeated requests do not rescan a tree that did not change,
and the whole listing that `discover` answers with is kept until something in it changes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..contract.errors import InvalidExtension, NotFound, VersionNotFound
from ..contract.messages import NAME_PATTERN, Available, ExtensionType
from .folders import is_folder_or_link, mtime, read_versions, scandir, tree_stamp
from .listing import close_names, to_available
from .slices import Steps, deadline, drain
from .version_info import VersionInfo
from .versions import Constraint, parse_version, sort_newest_first

_NAME = re.compile(NAME_PATTERN)


class ReleasesView(Protocol):
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

    def __init__(self, roots: Sequence[Path], *, releases: ReleasesView | None = None) -> None:
        self.roots = tuple(roots)
        self.releases = releases
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
        stamp = tuple(mtime(f) for f in folders)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found: dict[str, Path] = {}
        for folder in folders:
            for entry in scandir(folder):
                # A symlinked folder claims its name too (the first root wins), and is then refused as a whole,
                # as the loader refuses it: it never lets a later root's folder of that name through.
                if entry.name not in found and _NAME.match(entry.name) and is_folder_or_link(entry):
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
        published = self.releases.versions(extension_type, name) if self.releases is not None else {}
        if folder is None:
            if not published:
                raise NotFound(extension_type.value, name, self.suggest(extension_type, name))
            return published
        on_disk = self._entry(extension_type, name, folder).versions
        return {**published, **on_disk} if published else on_disk

    def has(self, extension_type: ExtensionType, name: str) -> bool:
        """Whether an extension of that type and name is on disk or in the registry, where a record that no
        trusted key signed for it does not count (it must not change what an untyped dependency means)."""
        if name in self.names(extension_type):
            return True
        if self.releases is None or name not in self.releases.names(extension_type):
            return False
        return any(i.untrusted is None or i.blocks for i in self.releases.versions(extension_type, name).values())

    def _entry(self, extension_type: ExtensionType, name: str, folder: Path) -> _NameEntry:
        key = (extension_type, name)
        cached = self._entries.get(key)
        if cached is not None and self.watched:
            return cached
        epoch = self._epoch
        now = time.time_ns()
        stamp = tree_stamp(folder)
        if cached is None or cached.stamp != stamp:
            versions = read_versions(extension_type, name, folder)
            listed = to_available(extension_type, name, versions)
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
        return close_names(name, self._all_names(extension_type))

    def _all_names(self, extension_type: ExtensionType) -> set[str]:
        names = set(self.names(extension_type))
        if self.releases is not None:
            names.update(self.releases.names(extension_type))
        return names

    def resolve(self, extension_type: ExtensionType, name: str, constraint: Constraint) -> VersionInfo:
        """The version a request means: the best that a constraint may choose; an exact version as asked, even
        yanked; an untrusted registry version only to say why it is refused (`require_trusted`)."""
        versions = self.versions(extension_type, name)
        best = constraint.best(v for v, info in versions.items() if info.choosable or info.blocks)
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
            published = self.releases.versions(t, name) if self.releases is not None else {}
            if name not in known:
                listed = to_available(t, name, published) if published else None
                if listed is not None:
                    out.append(listed)
                continue
            entry = self._entry(t, name, known[name])
            if not entry.versions and not published:
                continue  # a folder with no version in it offers nothing, as in the listing
            listed = to_available(t, name, {**published, **entry.versions}) if published else entry.listed
            if listed is None:
                first = next(iter(entry.versions.values()))
                raise InvalidExtension(str(first.path), first.problems)
            out.append(listed)
        if not out:
            everything = sorted({n for t in types for n in self._all_names(t)} - {name})
            kind = extension_type.value if extension_type else "extension"
            raise NotFound(kind, name, close_names(name, everything))
        return tuple(out)

    def listing(self, extension_type: ExtensionType | None = None) -> Steps[tuple[Available, ...]]:
        """What `available()` without a name answers, as a step function (see `slices`): on a tree of
        thousands, checking every name and building the listing is many slices of work."""
        types = [extension_type] if extension_type else list(ExtensionType)
        known: dict[ExtensionType, dict[str, Path]] = {}
        for t in types:
            known[t] = yield from self._look(t)
        releases = self.releases
        generation = (*(self._generations[t] for t in types), releases.change_count if releases is not None else 0)
        cached = self._listings.get(extension_type)
        if cached is not None and cached[0] == generation:
            return cached[1]
        out: list[Available] = []
        until = deadline()
        for t in types:
            published = set(releases.names(t)) if releases is not None else set()
            for n in sorted(published.union(known[t]) if published else known[t]):
                listed: Available | None
                if n in published:
                    assert releases is not None
                    on_disk = self._entry(t, n, known[t][n]).versions if n in known[t] else {}
                    listed = to_available(t, n, {**releases.versions(t, n), **on_disk})
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
