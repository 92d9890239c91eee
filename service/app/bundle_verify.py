"""A bundle judged with a site's pinned keys (its `[[registry.trusted]]`), before anything of it is written
(`bundle_import.py` writes it then).

1. Each record as a loader at the site judges it (`Trust.judge`): its state signed by a key pinned for its type
   and name; every release in it listed by that state, signed by such a key, its plain copy what was signed (its
   yanked flag too); no release the state lists missing; the sequence the manifest gives it the signed one.
2. Each archive: the sha256 of its bytes is the digest its release signs, its size the size signed (and within
   `registry.max_archive_mb`, checked as it is read: `bundles.py`); every archive a release names is in the
   bundle, and no other.
Any problem refuses the whole bundle, and each is named. The timestamp is kept when a key the site pins without
limits signed it; else it is left out, and why is said (a loader would ignore it).

Also here: the order records are written in, dependencies first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.trust import Trust
from ..registry.index import (
    IndexRecord,
    IndexRecordInvalid,
    decode_record,
    decode_timestamp,
    index_key,
)
from ..registry.statements import TimestampStatement
from .bundles import Bundle, BundleRefused, described


@dataclass(frozen=True, slots=True)
class Checked:
    """A bundle whose records and archives the site's keys trust: each record with its signed sequence, and its
    timestamp when trusted (else why it is not)."""

    bundle: Bundle
    records: dict[str, tuple[IndexRecord, int]]
    timestamp: TimestampStatement | None
    timestamp_note: str = ""


def check(bundle: Bundle, trust: Trust) -> Checked:
    """The bundle, each record judged as a loader at the site judges it and each archive against its signed digest
    and size; BundleRefused naming every problem."""
    problems: list[str] = []
    records: dict[str, tuple[IndexRecord, int]] = {}
    named: set[str] = set()
    for key, value in sorted(bundle.records.items()):
        what = described(key)
        try:
            record = decode_record(value)
        except IndexRecordInvalid as exc:
            problems.append(f"{what}: not an index record: {exc.reason}")
            continue
        if index_key(record.extension_type, record.name) != key:
            problems.append(f"{what}: the record is the one of {record.extension_type.value} {record.name}")
            continue
        named.update(release.digest for release in record.releases.values())
        if record.state is None:
            problems.append(f"{what}: a record of the old format, with no signed state")
            continue
        judgement = trust.judge(record)
        if judgement.sequence is None:
            why = next((v.untrusted for v in judgement.verdicts.values() if v.untrusted), None)
            problems.append(f"{what}: not trusted by this site's keys: {why or 'its signed state is not trusted'}")
            continue
        for version, verdict in sorted(judgement.verdicts.items()):
            if verdict.untrusted is not None:
                problems.append(f"{what} {version}: not trusted by this site's keys: {verdict.untrusted}")
        problems += [f"{what} {v}: in its signed state, but not in the record" for v in judgement.missing]
        problems += [f"{what} {note}" for note in judgement.ignored]
        if bundle.manifest.records[key] != judgement.sequence:
            said = bundle.manifest.records[key]
            problems.append(f"{what}: the manifest says sequence {said}, its signed state {judgement.sequence}")
        for version, release in sorted(record.releases.items()):
            archive = bundle.archives.get(release.digest)
            if archive is None:
                problems.append(f"{what} {version}: its archive {release.digest} is not in the bundle")
            elif archive.digest != release.digest:
                problems.append(
                    f"{what} {version}: its archive's bytes have the sha256 {archive.digest}, not the "
                    f"{release.digest} signed"
                )
            elif archive.size != release.size:
                problems.append(f"{what} {version}: its archive is {archive.size} bytes, not the {release.size} signed")
        records[key] = (record, judgement.sequence)
    problems += [f"archive {d}: no release in the bundle names it" for d in sorted(set(bundle.archives) - named)]
    if problems:
        raise BundleRefused("\n".join(problems))
    stamp, note = _timestamp(bundle.timestamp, trust)
    return Checked(bundle, records, stamp, note)


def _timestamp(value: bytes | None, trust: Trust) -> tuple[TimestampStatement | None, str]:
    if value is None:
        return None, "none in the bundle"
    try:
        stamp = trust.timestamp(decode_timestamp(value))
    except IndexRecordInvalid as exc:
        return None, f"left out: it cannot be read: {exc.reason}"
    if stamp is None:
        return None, "left out: no key this site pins without limits signed it"
    return stamp, ""


def dependencies_first(records: dict[str, tuple[IndexRecord, int]]) -> list[str]:
    """The records' keys, each after those of the bundle its releases depend on (else in key order; a cycle is
    broken where it closes): a loader with auto_update at the site that loads a newly imported version finds its
    dependencies there already."""
    needs: dict[str, set[str]] = {}
    for key, (record, _) in records.items():
        named = {_dependency_key(d) for r in record.releases.values() for d in r.dependencies}
        needs[key] = {k for k in named if k in records and k != key}
    order: list[str] = []
    done: set[str] = set()

    def visit(key: str, path: set[str]) -> None:
        if key in done or key in path:
            return
        path.add(key)
        for needed in sorted(needs[key]):
            visit(needed, path)
        path.discard(key)
        done.add(key)
        order.append(key)

    for key in sorted(records):
        visit(key, set())
    return order


def _dependency_key(dependency: str) -> str:
    """The index key a typed dependency (`taskserv:vault@^1`, as signed) names; "" for anything else."""
    kind, _, rest = dependency.partition(":")
    try:
        return index_key(kind, rest.partition("@")[0])
    except ValueError:
        return ""
