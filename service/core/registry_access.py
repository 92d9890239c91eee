"""How this loader reaches the registry now: the buckets its follower opened last, whether it follows the index,
and why not. The follower (`wire/follower.py`) says what changed; a fetch and the statistics read it.

The buckets are kept across a disconnect: once the connection is back, a fetch may use them again as soon as the
follower reads the index again.

At an edge site the buckets are mirrors of the hub's: the follower reads how they stand now and then
(`saw_mirrors`), and the statistics say how far behind the hub they may be (`mirror_stats`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final

from ..contract.messages import MirrorStats
from ..registry.archive_bucket import ArchiveBucket
from ..registry.buckets import RegistryBuckets
from ..registry.mirror import MirrorReading

# A mirror hears from the hub at least every second (a heartbeat while nothing changes): this long without a word,
# the link to the hub (or the hub) is down.
SILENT_S: Final = 5.0


class RegistryAccess:
    """Made with the loader (`app/serve.py`) and shared by its `Releases` and its follower."""

    def __init__(self) -> None:
        self._buckets: RegistryBuckets | None = None
        self._reachable = False
        self._last_error: str | None = None
        self._mirrors: tuple[MirrorReading, MirrorReading] | None = None
        self._mirrors_read_at = 0.0  # time.monotonic() of that reading

    @property
    def reachable(self) -> bool:
        """Whether the index is being followed: the buckets open and the whole index read."""
        return self._reachable

    @property
    def last_error(self) -> str | None:
        """Why the registry cannot be reached; None while it can."""
        return self._last_error

    def opened(self, buckets: RegistryBuckets) -> None:
        """The buckets were opened (again): fetches use these from now on."""
        self._buckets = buckets

    def following(self) -> None:
        """The whole index was read, and changes to it are coming."""
        self._reachable = True
        self._last_error = None

    def lost(self, why: str) -> None:
        """The registry cannot be reached, for the reason given."""
        self._reachable = False
        self._last_error = why

    def archives(self) -> ArchiveBucket | None:
        """The archive bucket to fetch from; None while the registry cannot be reached."""
        if self._buckets is None or not self._reachable:
            return None
        return self._buckets.archives

    def saw_mirrors(self, mirrors: tuple[MirrorReading, MirrorReading] | None) -> None:
        """The index's and the archives' mirrors as read just now; None: the buckets are not mirrors."""
        self._mirrors = mirrors
        self._mirrors_read_at = time.monotonic()

    def mirror_stats(self) -> MirrorStats | None:
        """How the site's mirrors stood when last read, aged by the time since; None when the buckets are no
        mirrors (or were never read)."""
        if self._mirrors is None:
            return None
        index, archives = self._mirrors
        since = time.monotonic() - self._mirrors_read_at
        heard = [None if m.heard_ago_s is None else round(m.heard_ago_s + since, 3) for m in (index, archives)]
        error = index.error or archives.error
        stored = index.last_stored
        return MirrorStats(
            hub_reachable=error is None and all(h is not None and h < SILENT_S for h in heard),
            last_sequence=index.last_sequence,
            age_s=None if stored is None else round((datetime.now(UTC) - stored).total_seconds(), 3),
            lag=index.lag,
            heard_s=heard[0],
            archives_last_sequence=archives.last_sequence,
            archives_lag=archives.lag,
            error=error,
        )
