"""The manager's counters, and the `cache` and `loads` parts of `extensions.stats` made from them."""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.messages import CacheStats, LoadStats


@dataclass(slots=True)
class Counters:
    hits: int = 0  # loads the cache answered
    misses: int = 0  # Nushell runs started for a load
    evictions: int = 0
    total: int = 0  # loads, reloads and hot reloads asked for
    cold: int = 0  # Nushell runs that loaded
    failed: int = 0
    coalesced: int = 0  # loads that joined a run under way

    def cache(self, size: int, capacity: int) -> CacheStats:
        lookups = self.hits + self.misses
        return CacheStats(
            size=size,
            capacity=capacity,
            hits=self.hits,
            misses=self.misses,
            hit_ratio=round(self.hits / lookups, 4) if lookups else 0.0,
            evictions=self.evictions,
        )

    def loads(self) -> LoadStats:
        return LoadStats(total=self.total, cold=self.cold, failed=self.failed, coalesced=self.coalesced)
