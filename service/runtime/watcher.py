"""Watching the extension roots on disk (watchfiles, debounced): which extensions each round of changes
touched.

It only tells: what the service then does about a change (reload, drop, announce) is the core's
`Reconciler`. A change inside `taskservs/kubernetes/...` names that extension; a whole type folder that came
or went names every extension of that type (`name` None).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

from watchfiles import awatch

from ..contract.messages import ExtensionType

log = logging.getLogger(__name__)

Change = tuple[ExtensionType, str | None]  # name None: every extension of that type

_FOLDERS = {t.folder: t for t in ExtensionType}


class DiskWatcher:
    def __init__(self, roots: Sequence[Path], *, debounce_ms: int = 300) -> None:
        self.roots = tuple(roots)
        self.debounce_ms = debounce_ms

    async def rounds(self) -> AsyncIterator[set[Change]]:
        """Yields an empty set once the watch is in place, then what each debounced round of changes touched
        (and an empty set now and then while nothing changes). Yields nothing when no root exists."""
        roots = [r for r in self.roots if r.is_dir()]
        if not roots:
            log.warning("no extension root exists; nothing to watch")
            return
        async for changes in awatch(
            *roots, debounce=self.debounce_ms, step=50, rust_timeout=200, yield_on_timeout=True
        ):
            yield self.affected(Path(p) for _, p in changes)

    def affected(self, paths: Iterable[Path]) -> set[Change]:
        found: set[Change] = set()
        for path in paths:
            for root in self.roots:
                try:
                    parts = path.relative_to(root).parts
                except ValueError:
                    continue
                kind = _FOLDERS.get(parts[0]) if parts else None
                if kind is not None:
                    found.add((kind, parts[1] if len(parts) >= 2 else None))
        return found
