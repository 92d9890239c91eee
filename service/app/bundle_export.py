"""`bundle export`: the registry's records as stored, chosen by extension and by how new their signed states are,
with every archive their releases name and the index's signed timestamp, written as one bundle (`bundles.py`).

An export reads only what a loader may read (the index and the archives) and judges no signature: the site judges
the bundle with its own pinned keys when it imports it. It does check what it copies: each archive must be the
bytes its release names (a registry that lost or changed one gives no bundle), and a record of the old format, or
one whose state cannot be read, is left out and named (refused when asked for by name).

Which records: every extension's, or those named (TYPE NAME), and with `since`:
- a whole number N: those whose signed state's sequence is greater than N;
- a time T: those whose signed state was signed (its `signed_at`) after T.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio.to_thread

from ..contract.messages import ExtensionType
from ..registry.buckets import RegistryBuckets
from ..registry.errors import ArchiveTooLarge
from ..registry.index import (
    TIMESTAMP_KEY,
    IndexRecord,
    IndexRecordInvalid,
    decode_record,
    index_key,
    object_name,
    parse_index_key,
)
from ..registry.statements import StatementInvalid, StateStatement, read
from .bundles import BundleRefused, Contents, described, write

Since = int | datetime


@dataclass(frozen=True, slots=True)
class ExportedRecord:
    key: str
    extension_type: ExtensionType
    name: str
    sequence: int
    versions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path
    sha256: str
    size: int  # of the bundle, in bytes
    records: tuple[ExportedRecord, ...]
    archives: tuple[str, ...]  # digests
    timestamp: bool
    left_out: tuple[str, ...]  # records not exported, each with why


async def export(
    buckets: RegistryBuckets,
    path: Path,
    *,
    since: Since | None = None,
    only: Sequence[tuple[ExtensionType, str]] = (),
    max_archive_bytes: int,
) -> Exported:
    """Writes the bundle of the records chosen (see the module's docstring) to `path`. BundleRefused for an
    extension named that the index has no signed record of, and for an archive that is missing or not the bytes
    its release names; nothing is written then."""
    values = {u.key: u.value for u in await buckets.index.entries() if u.value is not None}
    timestamp = values.pop(TIMESTAMP_KEY, None)
    named = {index_key(kind, name) for kind, name in only}
    absent = sorted(named - set(values))
    if absent:
        raise BundleRefused("; ".join(f"the registry has no record of {described(key)}" for key in absent))
    chosen: list[tuple[str, IndexRecord, StateStatement]] = []
    left_out: list[str] = []
    for key in sorted(named or values):
        try:
            record, state = _signed(key, values[key])
        except _LeftOut as exc:
            if named:
                raise BundleRefused(f"{described(key)}: {exc}") from None
            left_out.append(f"{key}: {exc}")
            continue
        if _newer(state, since):
            chosen.append((key, record, state))
    with tempfile.TemporaryDirectory(prefix="extension-bundle-") as scratch:
        archives: dict[str, Path] = {}
        for _, record, _ in chosen:
            for version, release in record.releases.items():
                if release.digest not in archives:
                    what = f"{record.extension_type.value} {record.name} {version}"
                    archives[release.digest] = await _fetch(buckets, what, release.digest, scratch, max_archive_bytes)
        contents = Contents(
            records={key: values[key] for key, _, _ in chosen},
            sequences={key: state.sequence for key, _, state in chosen},
            timestamp=timestamp,
            archives=archives,
        )
        sha256, size = await anyio.to_thread.run_sync(write, path, contents)
    exported = tuple(
        ExportedRecord(key, r.extension_type, r.name, s.sequence, tuple(sorted(r.releases))) for key, r, s in chosen
    )
    return Exported(path, sha256, size, exported, tuple(sorted(archives)), timestamp is not None, tuple(left_out))


class _LeftOut(Exception):
    """A record a bundle does not carry; the message says why."""


def _signed(key: str, value: bytes) -> tuple[IndexRecord, StateStatement]:
    """The record and what its state says (not verified: the site judges it)."""
    try:
        extension_type, name = parse_index_key(key)
        record = decode_record(value)
    except (ValueError, IndexRecordInvalid) as exc:
        raise _LeftOut(f"not an index record: {exc}") from None
    if (record.extension_type, record.name) != (extension_type, name):
        raise _LeftOut(f"the record under it is the one of {record.extension_type.value} {record.name}")
    if record.state is None:
        raise _LeftOut("a record of the old format, with no signed state: re-sign it with `extension-loader resign`")
    try:
        return record, read(record.state, StateStatement)
    except StatementInvalid as exc:
        raise _LeftOut(f"its signed state cannot be read: {exc}") from None


def _newer(state: StateStatement, since: Since | None) -> bool:
    if since is None:
        return True
    if isinstance(since, datetime):
        return state.signed_at > since
    return state.sequence > since


async def _fetch(buckets: RegistryBuckets, what: str, digest: str, scratch: str, max_bytes: int) -> Path:
    """The archive of `digest`, checked, in a file of `scratch`; BundleRefused when it is missing or differs."""
    name = object_name(digest)
    if await buckets.archives.info(name) is None:
        raise BundleRefused(f"{what}: its archive {name} is not in the archive bucket")
    into = Path(scratch, digest.removeprefix("sha256:"))
    try:
        fetched = await buckets.archives.fetch(name, into, max_bytes=max_bytes)
    except ArchiveTooLarge as exc:
        raise BundleRefused(f"{what}: {exc}") from None
    if fetched != digest:
        raise BundleRefused(f"{what}: its archive's bytes have the sha256 {fetched}, not the {digest} it names")
    return into
