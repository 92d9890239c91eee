"""What a publisher signs, and which signed states it builds on.

A publisher changes an extension's record only on a state it can verify: one signed by its own key, or by a key
of its configuration's `[[registry.trusted]]` allowed for that type and name; it refuses any other, naming the
key the state claims. It keeps the releases that state lists (their plain copies set from the signed ones),
drops the others, and signs the next state (sequence + 1). Each dependency is signed with its type, resolved as
the loader would resolve it: an explicit type is kept, else the owner's type when the registry or a local
extension path has that name of the owner's type, else taskserv. Also here: the index's compare-and-set and the
signed timestamp of every verified state (`refresh`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from ..contract.messages import ExtensionType
from ..contract.sections import TrustedKey
from ..core.folders import METADATA, MetadataFile
from ..core.versions import Constraint
from ..registry.buckets import RegistryBuckets
from ..registry.errors import Conflict
from ..registry.index import (
    TIMESTAMP_KEY,
    IndexRecord,
    IndexRecordInvalid,
    Release,
    decode_record,
    encode_record,
    index_key,
    object_name,
    parse_index_key,
)
from ..registry.signing import Signer, SigningKeyError, statement, verify
from ..registry.statements import (
    Envelope,
    ReleaseStatement,
    StatementInvalid,
    StateStatement,
    TimestampStatement,
    read,
    seal,
    signed_by,
)

_ATTEMPTS = 20  # compare-and-set rounds before giving up on a record that keeps changing
_DEPENDENCY = re.compile(r"(?:(?P<type>[A-Za-z]+):)?(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?:@(?P<constraint>[^\r\n]+))?")


class PublishRefused(Exception):
    """The folder or the version cannot be published, or the record cannot be changed; the message says why."""


def allowed_keys(own: str, trusted: Iterable[TrustedKey], extension_type: ExtensionType, name: str) -> set[str]:
    """The keys whose signed state a publisher builds on for one extension: its own, and those it trusts for it."""
    return {own} | {t.key for t in trusted if t.allows(extension_type.value, name)}


def verified_state(record: IndexRecord, keys: set[str]) -> StateStatement:
    """The record's state, signed by one of `keys` and of this record's extension; PublishRefused otherwise."""
    what = f"{record.extension_type.value} {record.name}"
    assert record.state is not None
    if not signed_by(record.state, keys):
        claimed = sorted({s.key for s in record.state.signatures})
        shown = ", ".join(claimed) or "no key"
        raise PublishRefused(
            f"the signed state of {what} is signed by {shown}, which this publisher does not trust: if that key may "
            f"publish {what}, trust it in the publisher's configuration (--config FILE: [[registry.trusted]] "
            f'key = "{claimed[0] if claimed else "O..."}"); the record is left as it is'
        )
    try:
        state = read(record.state, StateStatement)
    except StatementInvalid as exc:
        raise PublishRefused(f"the signed state of {what} cannot be read: {exc}") from None
    if (state.extension_type, state.name) != (record.extension_type, record.name):
        raise PublishRefused(f"the signed state under {what} is the one of {state.extension_type} {state.name}")
    return state


def listed_releases(record: IndexRecord, state: StateStatement) -> tuple[dict[str, Release], list[str]]:
    """The record's releases the state lists with their statement's digest, their plain copies set from what is
    signed; and a warning for each release dropped (not in the state) or listed but not as signed."""
    kept: dict[str, Release] = {}
    warnings: list[str] = []
    what = f"{record.extension_type.value} {record.name}"
    for version, release in record.releases.items():
        envelope = release.statement
        if version not in state.releases:
            warnings.append(f"{what} {version} is not in the extension's signed state: left out of the record")
            continue
        signed = _release_statement(envelope) if envelope is not None else None
        if envelope is None or signed is None or envelope.digest() != state.releases[version]:
            warnings.append(f"{what} {version} is not the release its signed state lists: left out of the record")
            continue
        signer = (
            release.signer if release.signer in {s.key for s in envelope.signatures} else envelope.signatures[0].key
        )
        kept[version] = release_copy(envelope, signed, signer, version in state.yanked)
    for version in state.releases:
        if version not in kept and version not in record.releases:
            warnings.append(f"{what} {version} is in the signed state but not in the record: publish it again")
    return kept, warnings


def _release_statement(envelope: Envelope) -> ReleaseStatement | None:
    try:
        return read(envelope, ReleaseStatement)
    except StatementInvalid:
        return None


def release_copy(envelope: Envelope, signed: ReleaseStatement, signer: str, yanked: bool) -> Release:
    """The index entry of a signed release: its plain fields copies of the signed ones."""
    return Release(
        version=signed.version,
        description=signed.description,
        dependencies=signed.dependencies,
        author=signed.author,
        repository=signed.repository,
        digest=signed.digest,
        tree_digest=signed.tree_digest,
        size=signed.size,
        object=object_name(signed.digest),
        signer=signer,
        signature="",
        published_at=signed.published_at,
        yanked=yanked,
        statement=envelope,
    )


def seal_release(signed: ReleaseStatement, signer: Signer) -> Envelope:
    """The release statement signed, after checking it reads back as a loader will read it."""
    envelope = seal(signed, [signer])
    try:
        read(envelope, ReleaseStatement)
    except StatementInvalid as exc:
        raise PublishRefused(
            f"{signed.extension_type} {signed.name} {signed.version} cannot be signed: {exc}"
        ) from None
    return envelope


def seal_state(
    record: IndexRecord | None,
    extension_type: ExtensionType,
    name: str,
    previous: StateStatement | None,
    releases: dict[str, Release],
    yanked: Iterable[str],
    signer: Signer,
) -> IndexRecord:
    """The record of these releases (each with its statement) and the next state listing them, signed."""
    listed = {v: r.statement.digest() for v, r in releases.items() if r.statement is not None}
    if previous is not None:
        listed = {**previous.releases, **listed}
    state = StateStatement(
        extension_type=extension_type,
        name=name,
        sequence=previous.sequence + 1 if previous is not None else 1,
        releases=listed,
        yanked=tuple(v for v in dict.fromkeys(yanked) if v in listed),
        signed_at=datetime.now(UTC),
    )
    envelope = seal(state, [signer])
    copies = {v: msgspec.structs.replace(r, yanked=v in state.yanked) for v, r in releases.items()}
    if record is None:
        return IndexRecord(extension_type=extension_type, name=name, releases=copies, state=envelope)
    return msgspec.structs.replace(record, releases=copies, state=envelope)


def v1_verifies(extension_type: ExtensionType, name: str, release: Release, keys: Iterable[str]) -> bool:
    """Whether the old format's signature of the release verifies with one of `keys` (user keys allowed)."""
    try:
        message = statement(extension_type.value, name, release.version, release.digest)
    except ValueError:
        return False
    for key in keys:
        try:
            if verify(key, message, release.signature, user_keys=True):
                return True
        except SigningKeyError:
            continue
    return False


def check_dependencies(entries: Sequence[str]) -> list[str]:
    """What is wrong with dependency entries (`[type:]name[@constraint]`), one line each."""
    problems: list[str] = []
    for entry in entries:
        match = _DEPENDENCY.fullmatch(entry.strip())
        if match is None:
            problems.append(f"dependency entry {entry!r} is not [type:]name[@constraint]")
            continue
        if match["type"] and match["type"] not in {t.value for t in ExtensionType}:
            problems.append(f"dependency {entry!r}: the type is provider, taskserv or cluster")
        try:
            Constraint.parse(match["constraint"], field="dependencies")
        except Exception:
            problems.append(f"dependency {entry!r}: {match['constraint']!r} is not a version constraint")
    return problems


async def typed_dependencies(
    entries: Sequence[str], owner: ExtensionType, buckets: RegistryBuckets, roots: Sequence[Path]
) -> tuple[str, ...]:
    """Each entry with its type: the one it names, else the owner's when the registry's index or a local
    extension path has that name of the owner's type, else taskserv. PublishRefused for an entry that is not one."""
    problems = check_dependencies(entries)
    if problems:
        raise PublishRefused("; ".join(problems))
    typed: list[str] = []
    for entry in entries:
        match = _DEPENDENCY.fullmatch(entry.strip())
        assert match is not None
        name = match["name"]
        if match["type"]:
            kind = ExtensionType(match["type"])
        elif any((root / owner.folder / name).is_dir() for root in roots) or await _indexed(buckets, owner, name):
            kind = owner
        else:
            kind = ExtensionType.TASKSERV
        constraint = f"@{match['constraint']}" if match["constraint"] else ""
        typed.append(f"{kind.value}:{name}{constraint}")
    return tuple(typed)


async def _indexed(buckets: RegistryBuckets, extension_type: ExtensionType, name: str) -> bool:
    value, _ = await buckets.index.get(index_key(extension_type, name))
    return value is not None


def read_metadata(folder: Path) -> MetadataFile:
    """The folder's metadata.toml; PublishRefused when there is none or it is not one."""
    path = folder / METADATA
    try:
        return msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), MetadataFile)
    except FileNotFoundError:
        raise PublishRefused(f"{folder} has no {METADATA}: give the folder of one extension version") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise PublishRefused(f"{path}: {exc}") from None


async def compare_and_set(
    buckets: RegistryBuckets, key: str, change: Callable[[IndexRecord | None], Awaitable[IndexRecord]]
) -> tuple[IndexRecord, int]:
    """Writes `change` of the record as read, if no one wrote the record meanwhile; else reads it again and
    retries (the KV revision is the lock). The record written and its new revision."""
    for _ in range(_ATTEMPTS):
        value, revision = await buckets.index.get(key)
        updated = await change(decode_record(value) if value is not None else None)
        try:
            return updated, await buckets.index.put(key, encode_record(updated), revision)
        except Conflict:
            continue  # someone wrote the record meanwhile: read it again
    raise PublishRefused(f"the index record {key} kept changing; try again")


@dataclass(frozen=True, slots=True)
class Refreshed:
    timestamp: TimestampStatement
    revision: int
    left_out: tuple[str, ...]  # index keys whose state this publisher cannot verify, each with why


async def refresh(
    buckets: RegistryBuckets, signer: Signer, trusted: Sequence[TrustedKey], expires_in_s: float
) -> Refreshed:
    """Signs a timestamp of the index: the sequence of every state signed by this publisher's key or a key it
    trusts for that extension, valid `expires_in_s` seconds; written under `TIMESTAMP_KEY` with compare-and-set."""
    if expires_in_s <= 0:
        raise ValueError(f"a timestamp expires after a positive number of seconds, not {expires_in_s}")
    for _ in range(_ATTEMPTS):
        _, revision = await buckets.index.get(TIMESTAMP_KEY)
        sequences: dict[str, int] = {}
        left_out: list[str] = []
        for update in sorted(await buckets.index.entries(), key=lambda u: u.key):
            if update.key == TIMESTAMP_KEY or update.value is None:
                continue
            try:
                extension_type, name = parse_index_key(update.key)
                record = decode_record(update.value)
                if record.state is None:
                    raise PublishRefused("a record of the old format: re-sign it with `extension-loader resign`")
                keys = allowed_keys(signer.public_key, trusted, extension_type, name)
                if (record.extension_type, record.name) != (extension_type, name):
                    raise PublishRefused(f"the record of {record.extension_type} {record.name}")
                sequences[update.key] = verified_state(record, keys).sequence
            except (ValueError, IndexRecordInvalid, PublishRefused) as exc:
                left_out.append(f"{update.key}: {exc}")
        now = datetime.now(UTC)
        timestamp = TimestampStatement(
            issued_at=now, expires_at=now + timedelta(seconds=expires_in_s), sequences=sequences
        )
        data = msgspec.json.encode(seal(timestamp, [signer]))
        try:
            written = await buckets.index.put(TIMESTAMP_KEY, data, revision)
        except Conflict:
            continue
        return Refreshed(timestamp, written, tuple(left_out))
    raise PublishRefused(f"the index key {TIMESTAMP_KEY} kept changing; try again")
