"""The LRU cache of loaded extensions, keyed `{type}:{name}:{version}`, and each extension's revision.

An extension's revision grows whenever what is cached of it is about to change (a reload, an unload, a
clear): a load that was already running then is not cached when it ends, so nothing replaces what came after
it. Evictions are handed back to whoever stored the entry that caused them, who announces them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cachetools import LRUCache

from ..contract.messages import Extension, ExtensionType
from .version_info import cache_key
from .versions import parse_version


class _LRU(LRUCache[str, Extension]):
    """cachetools' LRU, telling its owner what it evicts."""

    def __init__(self, maxsize: int, on_evict: Callable[[Extension], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, Extension]:
        key, value = super().popitem()
        self._on_evict(value)
        return key, value


class ExtensionCache:
    def __init__(self, capacity: int) -> None:
        self._evicted: list[Extension] = []
        self._lru = _LRU(capacity, self._evicted.append)
        self._revisions: dict[tuple[ExtensionType, str], int] = {}

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def capacity(self) -> int:
        return int(self._lru.maxsize)

    def get(self, key: str) -> Extension | None:
        return self._lru.get(key)

    def revision(self, extension_type: ExtensionType, name: str) -> int:
        return self._revisions.get((extension_type, name), 0)

    def bump(self, extension_type: ExtensionType, name: str) -> None:
        """What is cached of this extension is about to change."""
        key = (extension_type, name)
        self._revisions[key] = self._revisions.get(key, 0) + 1

    def put(self, key: str, extension: Extension, revision: tuple[ExtensionType, str, int]) -> list[Extension] | None:
        """Caches a loaded extension unless its extension's revision moved since the load began (None: not
        cached); returns what that evicted."""
        extension_type, name, number = revision
        if self.revision(extension_type, name) != number:
            return None
        self._lru[key] = extension
        evicted, self._evicted[:] = list(self._evicted), []
        return evicted

    def pop(self, key: str) -> Extension | None:
        return self._lru.pop(key, None)

    def pop_extension(self, extension_type: ExtensionType, name: str) -> list[Extension]:
        """Every cached version of one extension, taken out (newest first)."""
        prefix = cache_key(extension_type, name, "")
        return sort_entries([self._lru.pop(k) for k in [k for k in self._lru if k.startswith(prefix)]])

    def pop_all(self) -> list[Extension]:
        """Everything, taken out; every extension's revision moves."""
        dropped = list(self._lru.values())
        self._lru.clear()
        for key in self._revisions:
            self._revisions[key] += 1
        return dropped

    def entries(self, extension_type: ExtensionType | None = None, name: str | None = None) -> list[Extension]:
        """What is cached (of a type, of one extension), by type and name, newest version first."""
        return sort_entries(
            e
            for e in self._lru.values()
            if extension_type in (None, e.metadata.extension_type) and name in (None, e.metadata.name)
        )


def key_of(extension: Extension) -> str:
    m = extension.metadata
    return cache_key(m.extension_type, m.name, m.version)


def sort_entries(entries: Iterable[Extension]) -> list[Extension]:
    return sorted(entries, key=_sort_key)


def _sort_key(extension: Extension) -> tuple[str, str, _Desc]:
    m = extension.metadata
    return (m.extension_type.value, m.name, _Desc(parse_version(m.version)))


class _Desc:
    """Sorts newest first: the parsed version, compared the other way round."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(self.value > other.value)  # type: ignore[operator]
