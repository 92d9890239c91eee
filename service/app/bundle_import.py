"""`bundle import`: a bundle the site's pinned keys trust (`bundle_verify.py` checks it first) written into the
site's registry, after checking it against what the site holds: no record goes back (its sequence lower than that
of the site's record, or than the site's trusted timestamp lists for it) and none diverges (the same sequence,
another state). Either refuses the whole bundle, naming each record, before anything is written.

Then the archives are written (named by their digest; one that is there already is left as it is), then the
records, each byte for byte as in the bundle (so an export at the site gives the same bundle again), dependencies
first, with compare-and-set on the revision checked, then the timestamp: when it is newer than the site's and no
record at the site is older than it says (else a loader would take that record for a rollback), else it is left
out and said why. A record already the same bytes is left alone: importing a bundle twice changes nothing the
second time. A site record whose state the site's keys do not trust is replaced, and said so. A record someone
changes at the site while the import writes is checked again; one that has become newer is kept, and said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from ..contract.messages import ExtensionType
from ..core.trust import Trust
from ..registry.buckets import RegistryBuckets
from ..registry.errors import Conflict
from ..registry.index import TIMESTAMP_KEY, IndexRecordInvalid, decode_record, decode_timestamp, object_name
from ..registry.statements import Envelope, TimestampStatement
from .bundle_verify import Checked, dependencies_first
from .bundles import BundleRefused, described

_ATTEMPTS = 20  # compare-and-set rounds for a record someone keeps changing at the site


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    key: str
    extension_type: ExtensionType
    name: str
    sequence: int  # the bundle's
    previous: int | None  # the site's trusted sequence before (None: no record, or one not trusted)
    status: str  # added, updated, replaced (the site's was not trusted), unchanged, kept (newer at the site)


@dataclass(slots=True)
class Imported:
    records: list[RecordOutcome] = field(default_factory=list)
    archives_written: int = 0
    archives_present: int = 0
    timestamp: str = "none in the bundle"  # written, unchanged, or left out: why
    warnings: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        """Nothing was written."""
        written = self.archives_written or self.timestamp == "written"
        return not written and all(r.status in ("unchanged", "kept") for r in self.records)


async def import_bundle(buckets: RegistryBuckets, checked: Checked, trust: Trust) -> Imported:
    """Writes a checked bundle into the site's buckets (see the module's docstring). BundleRefused, with nothing
    written, for a record that would go back or diverge."""
    imported = Imported()
    floors = await _timestamp_floors(buckets, trust)
    plans: dict[str, tuple[str, int, int | None]] = {}  # key -> (status, revision, previous)
    problems: list[str] = []
    for key in sorted(checked.records):
        status, revision, previous = await _plan(buckets, trust, checked, key, floors.get(key, 0), problems)
        plans[key] = (status, revision, previous)
    if problems:
        raise BundleRefused("\n".join(problems))
    stamp_plan = await _plan_timestamp(buckets, trust, checked, plans)
    for digest, archive in sorted(checked.bundle.archives.items()):
        present = await buckets.archives.info(object_name(digest))
        if present is not None and present[1] == digest:
            imported.archives_present += 1
            continue
        await buckets.archives.put(object_name(digest), await anyio.Path(archive.path).read_bytes())
        imported.archives_written += 1
    for key in dependencies_first(checked.records):
        status, revision, previous = plans[key]
        record, sequence = checked.records[key]
        if status == "replaced":
            imported.warnings.append(
                f"{described(key)}: the site's record, whose signed state this site's keys do not "
                f"trust, is replaced by the bundle's (sequence {sequence})"
            )
        if status != "unchanged":
            status, previous = await _write(buckets, trust, checked, key, status, revision, previous, imported)
        imported.records.append(RecordOutcome(key, record.extension_type, record.name, sequence, previous, status))
    imported.timestamp = await _write_timestamp(buckets, checked, stamp_plan, imported)
    return imported


async def _plan(
    buckets: RegistryBuckets, trust: Trust, checked: Checked, key: str, floor: int, problems: list[str]
) -> tuple[str, int, int | None]:
    """What to do with one record, as the site holds it now: (status, revision, the site's trusted sequence)."""
    _, sequence = checked.records[key]
    value, revision = await buckets.index.get(key)
    if value is None:
        return "added", revision, None
    site, site_state = _judged(value, trust)
    if value == checked.bundle.records[key]:
        return "unchanged", revision, site
    what = described(key)
    if sequence < max(site or 0, floor):
        held = (
            f"the site's record is sequence {site}"
            if (site or 0) >= floor
            else (f"the site's signed timestamp lists sequence {floor}")
        )
        problems.append(f"{what}: the bundle's signed state is sequence {sequence}, older than {held}: a rollback")
        return "kept", revision, site
    bundle_state = checked.records[key][0].state
    diverged = site_state is not None and bundle_state is not None and site_state.payload != bundle_state.payload
    if site == sequence and diverged:
        problems.append(
            f"{what}: the bundle's signed state and the site's are both sequence {sequence}, and differ: the "
            "extension was changed in two places"
        )
        return "kept", revision, site
    return ("replaced" if site is None else "updated"), revision, site


def _judged(value: bytes, trust: Trust) -> tuple[int | None, Envelope | None]:
    """A site record's trusted sequence (None: not trusted, or not a record) and its state."""
    try:
        record = decode_record(value)
    except IndexRecordInvalid:
        return None, None
    if record.state is None:
        return None, None
    return trust.judge(record).sequence, record.state


async def _write(
    buckets: RegistryBuckets,
    trust: Trust,
    checked: Checked,
    key: str,
    status: str,
    revision: int,
    previous: int | None,
    imported: Imported,
) -> tuple[str, int | None]:
    """Writes one record with compare-and-set; on a change at the site meanwhile, checks it again."""
    for _ in range(_ATTEMPTS):
        try:
            await buckets.index.put(key, checked.bundle.records[key], revision)
            return status, previous
        except Conflict:
            problems: list[str] = []
            floors = await _timestamp_floors(buckets, trust)
            status, revision, previous = await _plan(buckets, trust, checked, key, floors.get(key, 0), problems)
            if problems or status == "unchanged":
                imported.warnings += [f"changed at the site during the import, kept: {p}" for p in problems]
                return status, previous
    imported.warnings.append(f"{described(key)}: kept changing at the site during the import: not written")
    return "kept", previous


async def _site_timestamp(
    buckets: RegistryBuckets, trust: Trust
) -> tuple[bytes | None, int, TimestampStatement | None]:
    value, revision = await buckets.index.get(TIMESTAMP_KEY)
    if value is None:
        return None, revision, None
    try:
        return value, revision, trust.timestamp(decode_timestamp(value))
    except IndexRecordInvalid:
        return value, revision, None


async def _timestamp_floors(buckets: RegistryBuckets, trust: Trust) -> dict[str, int]:
    """The sequences the site's trusted timestamp lists: no record may go below them."""
    _, _, stamp = await _site_timestamp(buckets, trust)
    return dict(stamp.sequences) if stamp is not None else {}


async def _plan_timestamp(
    buckets: RegistryBuckets, trust: Trust, checked: Checked, plans: dict[str, tuple[str, int, int | None]]
) -> tuple[str, int]:
    """("write", revision) or the timestamp's outcome and 0."""
    stamp = checked.timestamp
    if stamp is None:
        return checked.timestamp_note, 0
    value, revision, site = await _site_timestamp(buckets, trust)
    if value == checked.bundle.timestamp:
        return "unchanged", 0
    if site is not None and site.issued_at >= stamp.issued_at:
        return f"left out: the site's signed timestamp is as new (issued {site.issued_at:%Y-%m-%dT%H:%M:%SZ})", 0
    for key, listed in sorted(stamp.sequences.items()):
        if key in checked.records:
            continue  # the bundle's record, checked not to go back from the site's
        value_at_site, _ = await buckets.index.get(key)
        held = _judged(value_at_site, trust)[0] if value_at_site is not None else None
        if held is not None and held < listed:
            return (
                f"left out: it lists {described(key)} at sequence {listed}, and this site has sequence {held}: loaders "
                "would take the site's record for a rollback; import a bundle that holds that extension",
                0,
            )
    for key, (_, sequence) in checked.records.items():
        if sequence < stamp.sequences.get(key, 0):
            return f"left out: it lists {described(key)} at a sequence newer than the bundle's record", 0
    return "write", revision


async def _write_timestamp(
    buckets: RegistryBuckets, checked: Checked, plan: tuple[str, int], imported: Imported
) -> str:
    outcome, revision = plan
    if outcome != "write":
        if outcome.startswith("left out"):
            imported.warnings.append(f"the signed timestamp is {outcome}")
        return outcome
    assert checked.bundle.timestamp is not None
    try:
        await buckets.index.put(TIMESTAMP_KEY, checked.bundle.timestamp, revision)
    except Conflict:
        imported.warnings.append("the signed timestamp is left out: it changed at the site during the import")
        return "left out: it changed at the site during the import"
    return "written"
