"""What publishers sign: the registry's statements, each in a signed envelope.

An envelope follows DSSE (the in-toto signing envelope): it carries the statement's bytes (JSON) and its type, and
what is signed is `DSSEv1 <len(type)> <type> <len(payload)> <payload>`. The bytes verified are the bytes
decoded, so there is no canonical form to agree on, and a signature made for one kind of statement, or for
anything else a key might sign, can never pass for another. Each kind's type names its version: a loader refuses
a kind it does not know, and a later format gets a new type.

Three kinds, after TUF's roles:
- a **release** (TUF's targets): everything a loader acts on for one version: type, name, version, the archive's
  digest and size, the unpacked tree's digest, each dependency with its type, the description, publication time;
- an extension's **state** (TUF's snapshot, per extension): a sequence number that grows with every change, each
  release by the digest of its statement, and the yanked versions. A loader never goes back to a lower sequence;
- a **timestamp**: when the whole index was last vouched for, until when, and each extension's sequence then, so
  a registry that withholds changes is found out once it expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta, Struct

from ..contract.messages import ExtensionType
from .signing import Signer, SigningKeyError, verify

RELEASE = "application/vnd.extension-loader.release.v2+json"
STATE = "application/vnd.extension-loader.state.v1+json"
TIMESTAMP = "application/vnd.extension-loader.timestamp.v1+json"

_SHA256 = r"^sha256:[0-9a-f]{64}\Z"
# A dependency as signed: always with its type, resolved when it was published.
TYPED_DEPENDENCY = r"^(provider|taskserv|cluster):[a-z0-9][a-z0-9._-]{0,63}(@[^\r\n]+)?\Z"
_KEY = r"^[A-Z][A-Z2-7]{55}\Z"
_PAYLOAD_LIMIT = 1 << 20  # a statement is small; an index record is at most what the bucket allows

Digest = Annotated[str, Meta(pattern=_SHA256)]


class StatementInvalid(Exception):
    """An envelope or statement that cannot be read; the message says what is wrong."""


class Signature(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: Annotated[str, Meta(pattern=_KEY)]  # the signer's public key, O...
    sig: str  # unpadded base64url; checked by signing.verify, which takes any text


class Envelope(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    payload_type: str
    payload: str  # standard base64 of the statement's bytes
    signatures: tuple[Signature, ...]

    def payload_bytes(self) -> bytes:
        """The statement's bytes; StatementInvalid when the payload is not base64, or too long."""
        if len(self.payload) > _PAYLOAD_LIMIT * 4 // 3 + 4:
            raise StatementInvalid("the payload is too long")
        try:
            return base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError):
            raise StatementInvalid("the payload is not base64") from None

    def digest(self) -> str:
        """The sha256 of the statement's bytes: how a state names a release."""
        return "sha256:" + hashlib.sha256(self.payload_bytes()).hexdigest()


class ReleaseStatement(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    extension_type: ExtensionType
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    version: Annotated[str, Meta(min_length=1, max_length=64)]
    digest: Digest  # of the archive's bytes
    size: Annotated[int, Meta(ge=0)]  # of the archive
    tree_digest: Digest  # of the unpacked version folder
    dependencies: tuple[Annotated[str, Meta(pattern=TYPED_DEPENDENCY)], ...]
    description: str
    author: str | None = None
    repository: str | None = None
    published_at: Annotated[datetime, Meta(tz=True)]


class StateStatement(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    extension_type: ExtensionType
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    sequence: Annotated[int, Meta(ge=1)]
    releases: dict[str, Digest]  # version -> digest of its release statement's bytes
    yanked: tuple[str, ...] = ()
    signed_at: Annotated[datetime, Meta(tz=True)]


class TimestampStatement(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    issued_at: Annotated[datetime, Meta(tz=True)]
    expires_at: Annotated[datetime, Meta(tz=True)]
    sequences: dict[str, Annotated[int, Meta(ge=1)]]  # index key -> the extension's sequence then


_Statement = TypeVar("_Statement", ReleaseStatement, StateStatement, TimestampStatement)
_TYPES: dict[type[Struct], str] = {ReleaseStatement: RELEASE, StateStatement: STATE, TimestampStatement: TIMESTAMP}
_encoder = msgspec.json.Encoder(order="deterministic")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def seal(statement: ReleaseStatement | StateStatement | TimestampStatement, signers: Iterable[Signer]) -> Envelope:
    """The statement in an envelope, signed by each signer."""
    payload_type = _TYPES[type(statement)]
    payload = _encoder.encode(statement)
    message = pae(payload_type, payload)
    return Envelope(
        payload_type=payload_type,
        payload=base64.b64encode(payload).decode(),
        signatures=tuple(Signature(key=s.public_key, sig=s.sign(message)) for s in signers),
    )


def signed_by(envelope: Envelope, keys: Iterable[str]) -> set[str]:
    """Which of `keys` signed the envelope, each signature verified over its type and bytes. A malformed
    payload verifies for nobody; a malformed key never matches (keys are checked where they are configured)."""
    try:
        message = pae(envelope.payload_type, envelope.payload_bytes())
    except StatementInvalid:
        return set()
    wanted = set(keys)
    found: set[str] = set()
    for signature in envelope.signatures:
        if signature.key in wanted and signature.key not in found:
            try:
                if verify(signature.key, message, signature.sig):
                    found.add(signature.key)
            except SigningKeyError:
                continue
    return found


def read(envelope: Envelope, kind: type[_Statement]) -> _Statement:
    """The statement an envelope carries, of the kind expected; StatementInvalid for any other type, or for bytes
    that are not such a statement. Read only what a trusted key signed: the signature is checked by the caller."""
    if envelope.payload_type != _TYPES[kind]:
        raise StatementInvalid(f"a statement of type {envelope.payload_type!r}, where {_TYPES[kind]!r} was expected")
    try:
        return msgspec.json.decode(envelope.payload_bytes(), type=kind)
    except msgspec.DecodeError as exc:
        raise StatementInvalid(f"not a {_TYPES[kind]} statement: {exc}") from None
