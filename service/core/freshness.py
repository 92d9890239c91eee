"""How new this loader's view of the registry's index is: the newest signed timestamp it took (TUF's timestamp
role), the sequence it says each extension had then (the lowest a record may come with), and whether the view is
stale under `registry.max_age_s`: no timestamp seen, the newest one expired, or older than that. Stale is logged
when it begins and when it ends (not at every look), reported in stats and the metric, and never stops serving.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ..registry.statements import Envelope, TimestampStatement

log = logging.getLogger("service.core.releases")


class Freshness:
    def __init__(self, max_age_s: float) -> None:
        self._max_age_s = max_age_s
        self._newest: tuple[Envelope, TimestampStatement] | None = None
        self._kind: str | None = None  # what kind of stale the view was when last looked at

    @property
    def envelope(self) -> Envelope | None:
        """The newest timestamp taken, as signed (kept with the saved index)."""
        return self._newest[0] if self._newest is not None else None

    def take(self, envelope: Envelope, stamp: TimestampStatement) -> None:
        """A trusted timestamp: kept when it is newer than the one held (an older one never replaces it)."""
        if self._newest is not None and stamp.issued_at <= self._newest[1].issued_at:
            return
        self._newest = (envelope, stamp)
        self.look()

    def sequence(self, key: str) -> int:
        """The sequence the newest timestamp gives the extension of index key `key` (0: none)."""
        return self._newest[1].sequences.get(key, 0) if self._newest is not None else 0

    def look(self, now: datetime | None = None) -> tuple[float | None, str | None]:
        """Seconds since the newest timestamp was signed (None: none seen), and why the view is stale (None: it is
        not, or `max_age_s` is 0). A change of kind is logged."""
        now = now or datetime.now(UTC)
        stamp = self._newest[1] if self._newest is not None else None
        age = round((now - stamp.issued_at).total_seconds(), 3) if stamp is not None else None
        kind: str | None = None
        stale: str | None = None
        if self._max_age_s > 0:
            if stamp is None:
                kind, stale = "none", "no signed timestamp of the index was seen (`extension-loader refresh` signs one)"
            elif now > stamp.expires_at:
                kind, stale = "expired", f"the newest signed timestamp expired at {stamp.expires_at:%Y-%m-%dT%H:%M:%SZ}"
            elif age is not None and age > self._max_age_s:
                kind = "old"
                stale = f"the newest signed timestamp is {age:.0f} s old, over registry.max_age_s = {self._max_age_s:g}"
        if kind != self._kind:
            if stale is not None:
                log.warning("registry: this loader's view of the index is stale: %s; serving what it has", stale)
            else:
                log.info("registry: this loader's view of the index is fresh again")
            self._kind = kind
        return age, stale
