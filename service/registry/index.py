"""The registry's index: one record per extension in the Key-Value bucket, holding every published version,
and the signed timestamp of the whole index under the key `timestamp`.

A record is JSON of `IndexRecord`: each release says which archive object it is, and carries its signed release
statement; the record carries the extension's signed state (`statements.py`). The other fields are the
publisher's plain copy, for reading and searching: a loader acts only on what a trusted key signed, and finds
any difference (`core/trust.py`). A record of the old format (v1) has neither: its releases hold a signature of
their identity and archive digest alone. Records change by adding a release or by yanking one, each a new record
the publisher writes with compare-and-set. Unknown fields are ignored when decoding, so a record written by a
newer publisher still loads. Key names are checked here, as nats-py checks them only in part.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from ..contract.messages import NAME_PATTERN, ExtensionType
from .statements import Envelope

# `\Z`, not `$`: Python's `$` also matches before a final newline.
_SHA256 = r"^sha256:[0-9a-f]{64}\Z"
_OBJECT = r"^sha256/[0-9a-f]{64}\Z"
_PUBLIC_KEY = r"^[OU][A-Z2-7]{55}\Z"  # O: a release key; U: a user key, which signed the old format
# A semantic version, without leading zeros in its numbers: it names a folder in the loader's cache.
VERSION = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?\Z"
)
_NAME = re.compile(NAME_PATTERN)
_NAME_LENGTH = 64
_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_DOT = "=2e"
TIMESTAMP_KEY = "timestamp"  # the signed timestamp's key: no extension's key, which always holds a "."

Digest = Annotated[str, Meta(pattern=_SHA256)]


# Unlike the wire messages, records do not forbid unknown fields: a loader must keep reading the index after a
# newer publisher has added to it.
class Release(Struct, frozen=True, kw_only=True):
    """One published version: its metadata, its archive, and its signed statement (`statement`; in the old
    format, `signature` of its identity and digest)."""

    version: Annotated[str, Meta(max_length=64, pattern=VERSION)]
    description: str
    dependencies: tuple[str, ...] = ()
    author: str | None = None
    repository: str | None = None
    digest: Digest  # of the archive's bytes: checked before unpacking
    tree_digest: Digest  # of the unpacked folder (the loader's digest): the release's lasting identity
    size: Annotated[int, Meta(ge=0)]  # of the archive
    object: Annotated[str, Meta(pattern=_OBJECT)]  # the archive's name in the object bucket
    signer: Annotated[str, Meta(pattern=_PUBLIC_KEY)]
    signature: str = ""  # the old format's: unpadded base64url; checked by signing.verify, which takes any text
    published_at: Annotated[datetime, Meta(tz=True)]
    yanked: bool = False  # a copy of the state's; in the old format, the only word on it
    statement: Envelope | None = None  # the signed release statement (None: the old format)


class IndexRecord(Struct, frozen=True, kw_only=True):
    """Everything published of one extension: its releases by version."""

    extension_type: ExtensionType
    name: str
    releases: dict[str, Release]
    state: Envelope | None = None  # the extension's signed state (None: the old format)

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise ValueError(f"{self.name!r} is not an extension name")
        for version, release in self.releases.items():
            if version != release.version:
                raise ValueError(f"the release under {version!r} is version {release.version!r}")


class IndexRecordInvalid(Exception):
    """A value in the index that is not a record; `reason` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid index record: {reason}")
        self.reason = reason


class AlreadyPublished(ValueError):
    """A version that is in the record already: a release is never replaced."""

    def __init__(self, extension_type: ExtensionType, name: str, version: str) -> None:
        super().__init__(f"{extension_type} {name} {version} is already published")
        self.extension_type = extension_type
        self.name = name
        self.version = version


class NoSuchRelease(KeyError):
    """A version that the record does not hold."""

    def __init__(self, record: IndexRecord, version: str) -> None:
        super().__init__(version)
        self.extension_type = record.extension_type
        self.name = record.name
        self.version = version
        self.available = tuple(record.releases)

    def __str__(self) -> str:  # KeyError's own would quote the version alone
        available = ", ".join(self.available) or "none"
        return f"{self.extension_type} {self.name} has no release {self.version} (published: {available})"


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(IndexRecord)


def encode_record(record: IndexRecord) -> bytes:
    """The record as the JSON stored in the bucket."""
    return _encoder.encode(record)


_timestamp_decoder = msgspec.json.Decoder(Envelope)


def decode_timestamp(data: bytes) -> Envelope:
    """The envelope under `TIMESTAMP_KEY`; IndexRecordInvalid, with the reason, for anything else."""
    try:
        return _timestamp_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise IndexRecordInvalid(str(exc)) from None


def decode_record(data: bytes) -> IndexRecord:
    """A record from the bucket, checked: IndexRecordInvalid, with the reason, for anything else."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise IndexRecordInvalid(str(exc)) from None


def index_key(extension_type: ExtensionType | str, name: str) -> str:
    """`<type>.<name>`, every "." of the name written "=2e"; ValueError for a type or name that is not one."""
    kind = ExtensionType(extension_type)
    if not _valid_name(name):
        raise ValueError(f"{name!r} is not an extension name")
    return f"{kind.value}.{name.replace('.', _DOT)}"


def parse_index_key(key: str) -> tuple[ExtensionType, str]:
    """The type and name of an index key; ValueError for anything `index_key` would not have made."""
    if not _KEY.fullmatch(key) or "" in key.split("."):
        raise ValueError(f"{key!r} is not a valid key")
    kind, _, encoded = key.partition(".")
    try:
        extension_type = ExtensionType(kind)
    except ValueError:
        raise ValueError(f"{key!r}: {kind!r} is not an extension type") from None
    name = encoded.replace(_DOT, ".")
    if not _valid_name(name) or index_key(extension_type, name) != key:
        raise ValueError(f"{key!r} does not name an extension")
    return extension_type, name


def object_name(digest: str) -> str:
    """The archive's object name for its digest: "sha256:<hex>" is "sha256/<hex>"."""
    if not re.match(_SHA256, digest):
        raise ValueError(f"{digest!r} is not a sha256 digest (sha256:<64 lower-case hex digits>)")
    return digest.replace(":", "/", 1)


def with_release(
    record: IndexRecord | None, extension_type: ExtensionType | str, name: str, release: Release
) -> IndexRecord:
    """The record with one more release (a new record when there was none). AlreadyPublished (a ValueError) when
    the version is there; ValueError when the record is of another extension."""
    kind = ExtensionType(extension_type)
    index_key(kind, name)  # checks the name
    if record is None:
        return IndexRecord(extension_type=kind, name=name, releases={release.version: release})
    if (record.extension_type, record.name) != (kind, name):
        raise ValueError(f"the record of {record.extension_type} {record.name} is not the one of {kind} {name}")
    if release.version in record.releases:
        raise AlreadyPublished(kind, name, release.version)
    return msgspec.structs.replace(record, releases={**record.releases, release.version: release})


def with_yank(record: IndexRecord, version: str, yanked: bool) -> IndexRecord:
    """The record with one release's plain `yanked` copy set (the signed word is the state's); NoSuchRelease (a
    KeyError) for a version it does not hold."""
    release = record.releases.get(version)
    if release is None:
        raise NoSuchRelease(record, version)
    changed = msgspec.structs.replace(release, yanked=yanked)
    return msgspec.structs.replace(record, releases={**record.releases, version: changed})


def _valid_name(name: str) -> bool:
    # fullmatch: NAME_PATTERN ends in `$`, which would let a final newline through
    return len(name) <= _NAME_LENGTH and _NAME.fullmatch(name) is not None
