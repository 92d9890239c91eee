"""The registry's releases as this loader sees them: what is published, and which of it this loader trusts.

The index (one record per extension, from the Key-Value bucket) is held in memory, fed by the follower
(`wire/follower.py`), and saved after each change (`saved_index.py`), so a loader started without JetStream still
knows the versions it fetched before. Each record is judged whole by `trust.py`, whether it came from the bucket
or from the saved file; each release becomes a `VersionInfo` the store merges with the disk's, marked untrusted
unless trusted. The highest signed sequence seen of each extension is kept (and saved): a record whose signed
state is older is a rollback, ignored whole. The newest trusted timestamp says how old this view is
(`freshness`). A load of a release fetches it first (`fetching.py`), against the index entry as it stands then.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..contract.config import RegistryConfig
from ..contract.errors import Unavailable, UntrustedExtension
from ..contract.messages import ExtensionMetadata, ExtensionType, RegistryStats
from ..registry.index import (
    TIMESTAMP_KEY,
    IndexRecord,
    IndexRecordInvalid,
    Release,
    decode_record,
    decode_timestamp,
    index_key,
    parse_index_key,
)
from ..registry.statements import Envelope
from . import audit
from .fetching import ReleaseFetcher
from .freshness import Freshness
from .registry_access import RegistryAccess
from .saved_index import Saved, read_index, save_index
from .trust import Judgement, Trust, Verdict
from .version_info import VersionInfo

log = logging.getLogger(__name__)

_Name = tuple[ExtensionType, str]


@dataclass(slots=True)
class Changes:
    """What one index update changed, in the terms the cache cares about."""

    published: list[VersionInfo] = field(default_factory=list)  # new releases
    yanked: list[VersionInfo] = field(default_factory=list)
    restored: list[VersionInfo] = field(default_factory=list)  # yanks undone
    withdrawn: list[VersionInfo] = field(default_factory=list)  # gone from the index altogether
    # The whole index, read by a loader that never read it before (nor had it saved): nothing in it is news.
    first_reading: bool = False

    def __bool__(self) -> bool:
        return bool(self.published or self.yanked or self.restored or self.withdrawn)

    def extend(self, other: Changes) -> None:
        self.published += other.published
        self.yanked += other.yanked
        self.restored += other.restored
        self.withdrawn += other.withdrawn


class Releases:
    """The store's `RegistryView`, and the fetcher of what it lists. `access`: how the registry is reached now,
    which the follower keeps up to date."""

    def __init__(self, config: RegistryConfig, folder: Path, access: RegistryAccess) -> None:
        self.config = config
        self.folder = folder
        self.access = access
        self.refused = 0  # releases a load was refused
        self.rollbacks = 0  # records ignored for a signed state older than one seen before
        self.unsigned = 0  # things a record said that no trusted key signed (a yank flag, a release not listed)
        self._never_read = True  # no index read before, from the bucket or the saved copy
        self._records: dict[_Name, IndexRecord] = {}
        self._views: dict[_Name, dict[str, VersionInfo]] = {}
        self._names: dict[ExtensionType, set[str]] = {t: set() for t in ExtensionType}
        self._change_count = 0
        self._sequences: dict[str, int] = {}  # index key -> the highest signed sequence seen
        self._owed: set[str] = set()  # version keys owed an automatic load (`owe_load`)
        self._freshness = Freshness(config.max_age_s)
        self._trust = Trust(config.trusted, accept_v1=config.accept_v1)
        self._fetcher = ReleaseFetcher(config, folder, self._trust, access)

    # --- what the store reads ---

    @property
    def change_count(self) -> int:
        """How many times what this view holds has changed."""
        return self._change_count

    def names(self, extension_type: ExtensionType) -> Collection[str]:
        return self._names[extension_type]

    def versions(self, extension_type: ExtensionType, name: str) -> dict[str, VersionInfo]:
        return self._views.get((extension_type, name), {})

    def counts(self) -> tuple[int, int]:
        """Extensions and versions in the index as last read."""
        return len(self._records), sum(len(r.releases) for r in self._records.values())

    def stats(self) -> RegistryStats:
        extensions, versions = self.counts()
        age, stale = self.freshness()
        return RegistryStats(
            reachable=self.access.reachable,
            extensions=extensions,
            versions=versions,
            fetched=self._fetcher.fetched,
            refused=self.refused,
            auto_update=self.config.auto_update,
            last_error=self.access.last_error,
            view_age_s=age,
            stale=stale,
            rollbacks=self.rollbacks,
            unsigned=self.unsigned,
            mirror=self.access.mirror_stats(),
        )

    def freshness(self, now: datetime | None = None) -> tuple[float | None, str | None]:
        """How old this view of the index is, and why it is stale (`freshness.py`)."""
        return self._freshness.look(now)

    # --- what a load does ---

    async def fetch(self, info: VersionInfo) -> Path:
        """The root to load `info` from, once fetched, verified and unpacked (`ReleaseFetcher.fetch` says how it
        fails). The release is read again here, and must still be the one judged when the load chose it."""
        info.require_trusted()
        release = self._current(info)
        try:
            return await self._fetcher.fetch(info, release)
        except UntrustedExtension:
            self.refused += 1
            raise

    def count_refusal(self) -> None:
        """A load was refused a release it resolved to (untrusted, so never fetched): counted in the stats."""
        self.refused += 1

    def _current(self, info: VersionInfo) -> Release:
        """The index's entry for `info` as it stands now."""
        record = self._records.get((info.extension_type, info.name))
        release = record.releases.get(info.version) if record is not None else None
        if release is None:
            raise Unavailable(f"{info.key} is no longer in the registry's index")
        return release

    # --- the index ---

    def apply(self, key: str, value: bytes | None) -> Changes:
        """One record as the bucket holds it now (None: deleted). A record that cannot be read is logged and
        leaves what was known of that extension as it was."""
        self._never_read = False
        if key == TIMESTAMP_KEY:
            self._read_timestamp(value)
            return Changes()
        try:
            extension_type, name = parse_index_key(key)
        except ValueError:
            log.warning("registry index: ignoring key %r, which names no extension", key)
            return Changes()
        if value is None:
            return self._set((extension_type, name), None)
        try:
            record = decode_record(value)
        except IndexRecordInvalid as exc:
            log.warning("registry index: the record of %s %s cannot be read: %s", extension_type.value, name, exc)
            return Changes()
        if (record.extension_type, record.name) != (extension_type, name):
            log.warning("registry index: key %r holds the record of %s %s", key, record.extension_type, record.name)
            return Changes()
        return self._set((extension_type, name), record)

    def replace(self, entries: Iterable[tuple[str, bytes | None]]) -> Changes:
        """The whole index as read anew (a watch (re)started): what is not in it any more is withdrawn."""
        changes = Changes(first_reading=self._never_read)
        seen: set[_Name] = set()
        entries = list(entries)
        for key, value in entries:  # the timestamp first: it says how new each record must be
            if key == TIMESTAMP_KEY:
                self._read_timestamp(value)
        for key, value in entries:
            with contextlib.suppress(ValueError):
                seen.add(parse_index_key(key))
            changes.extend(self.apply(key, value))
        for gone in [n for n in self._records if n not in seen]:
            changes.extend(self._set(gone, None))
        self._never_read = False
        return changes

    def _read_timestamp(self, value: bytes | None) -> None:
        """The index's signed timestamp, kept when a key without limits signed it and it is newer than the one
        held; anything else is logged and changes nothing."""
        if value is None:
            return
        try:
            envelope = decode_timestamp(value)
        except IndexRecordInvalid as exc:
            log.warning("registry index: the timestamp cannot be read: %s", exc)
            return
        self._take_timestamp(envelope)

    def _take_timestamp(self, envelope: Envelope) -> None:
        stamp = self._trust.timestamp(envelope)
        if stamp is None:
            self.unsigned += 1
            log.warning("registry index: ignoring a timestamp no key without limits that this loader trusts signed")
            return
        self._freshness.take(envelope, stamp)

    def _floor(self, key: str) -> int:
        """The lowest signed sequence a record of `key` may have: the highest seen, or the timestamp's."""
        return max(self._sequences.get(key, 0), self._freshness.sequence(key))

    def _set(self, name: _Name, record: IndexRecord | None) -> Changes:
        before = self._views.get(name, {})
        if record is None:
            self._records.pop(name, None)
            self._views.pop(name, None)
            self._names[name[0]].discard(name[1])
        else:
            judgement = self._trust.judge(record)
            key = index_key(*name)
            floor = self._floor(key)
            # A record of the old format, once a signed state was seen, goes back as far as an older state does.
            if floor and (record.state is None or (judgement.sequence is not None and judgement.sequence < floor)):
                self.rollbacks += 1
                state = f"sequence {judgement.sequence}" if record.state is not None else "missing (the old format)"
                why = f"its signed state is {state}, older than {floor} seen before"
                log.warning("registry index: ignoring the record of %s %s: %s", name[0].value, name[1], why)
                audit.record("refused", key, "ROLLBACK", why)
                return Changes()
            if judgement.sequence is not None:
                self._sequences[key] = judgement.sequence
            self._report(name, judgement)
            self._records[name] = record
            self._views[name] = self._view(record, judgement)
            self._names[name[0]].add(name[1])
        after = self._views.get(name, {})
        changes = Changes(
            published=[i for v, i in after.items() if v not in before],
            yanked=[i for v, i in after.items() if v in before and i.yanked and not before[v].yanked],
            restored=[i for v, i in after.items() if v in before and not i.yanked and before[v].yanked],
            withdrawn=[i for v, i in before.items() if v not in after],
        )
        if changes or before.keys() != after.keys() or record is not None:
            self._change_count += 1
        return changes

    def _report(self, name: _Name, judgement: Judgement) -> None:
        for what in judgement.ignored:
            self.unsigned += 1
            log.warning("registry index: %s %s %s: ignored", name[0].value, name[1], what)
            audit.record("ignored", f"{name[0].value}:{name[1]}", "UNSIGNED", what)

    def _view(self, record: IndexRecord, judgement: Judgement) -> dict[str, VersionInfo]:
        view = {v: self._info(record, r, judgement.verdicts[v]) for v, r in record.releases.items()}
        for version in judgement.missing:  # listed in the signed state: it blocks older versions
            view[version] = VersionInfo(
                record.extension_type,
                record.name,
                version,
                self.folder / "trees" / "missing",
                None,
                ("listed in its extension's signed state, but not in the index record",),
                source="registry",
                untrusted="it is listed in its extension's signed state, but the index record does not hold it",
                blocks=True,
            )
        return view

    def _info(self, record: IndexRecord, release: Release, verdict: Verdict) -> VersionInfo:
        extension_type, name = record.extension_type, record.name
        metadata = ExtensionMetadata(
            name=name,
            version=release.version,
            description=release.description,
            extension_type=extension_type,
            dependencies=tuple(release.dependencies),
            author=release.author,
            repository=release.repository,
        )
        return VersionInfo(
            extension_type,
            name,
            release.version,
            self._fetcher.tree(release) / extension_type.folder / name / release.version,
            metadata,
            source="registry",
            yanked=verdict.yanked,
            untrusted=verdict.untrusted,
            signer=release.signer,
            blocks=verdict.blocks,
        )

    # --- automatic loads owed ---

    def owe_load(self, key: str) -> None:
        """The version `key` (a newly published latest) is owed an automatic load that could not be made yet: at an
        edge site, its archive was not in the site's mirror. Kept with the saved index at the next `save`."""
        self._owed.add(key)

    def owes_loads(self) -> bool:
        return bool(self._owed)

    def take_owed(self) -> list[VersionInfo]:
        """The versions owed an automatic load, as this view lists them now, no longer owed: the caller tries them
        and owes again what still cannot be loaded (then saves). A version the index no longer lists is dropped."""
        owed, self._owed = sorted(self._owed), set()
        found: list[VersionInfo] = []
        for key in owed:
            extension_type, name, version = key.split(":", 2)
            info = self.versions(ExtensionType(extension_type), name).get(version)
            if info is not None:
                found.append(info)
        return found

    # --- the saved copy ---

    def save(self) -> None:
        """Keeps the index as known now, with the highest sequences seen and the timestamp, for a start without
        JetStream and for every start after: a restart never forgets how new a record must be."""
        saved = Saved(
            records=tuple(self._records[n] for n in sorted(self._records)),
            sequences=dict(sorted(self._sequences.items())),
            timestamp=self._freshness.envelope,
            owed=tuple(sorted(self._owed)),
        )
        save_index(self.folder / "index.json", saved)

    def restore(self) -> None:
        """Reads the saved index, if any: each record is judged again, as if it came from the bucket."""
        saved = read_index(self.folder / "index.json")
        if saved is None:
            return
        self._sequences.update(saved.sequences)
        self._owed.update(saved.owed)
        if saved.timestamp is not None:
            self._take_timestamp(saved.timestamp)
        for record in saved.records:
            self._set((record.extension_type, record.name), record)
        self._never_read = False
