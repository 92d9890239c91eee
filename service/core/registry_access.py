"""How this loader reaches the registry now: the buckets its follower opened last, whether it follows the index,
and why not. The follower (`wire/follower.py`) says what changed; a fetch and the statistics read it.

The buckets are kept across a disconnect: once the connection is back, a fetch may use them again as soon as the
follower reads the index again.
"""

from __future__ import annotations

from ..registry.archive_bucket import ArchiveBucket
from ..registry.buckets import RegistryBuckets


class RegistryAccess:
    """Made with the loader (`app/serve.py`) and shared by its `Releases` and its follower."""

    def __init__(self) -> None:
        self._buckets: RegistryBuckets | None = None
        self._reachable = False
        self._last_error: str | None = None

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
