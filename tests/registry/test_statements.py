"""Signed statements: the DSSE envelope's bytes exactly, a payload read strictly, signatures counted per pinned key,
and a statement read only as the kind its type names."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import msgspec
import nkeys
import pytest

from service.contract.messages import ExtensionType
from service.registry.signing import Signer, new_seed, verify
from service.registry.statements import (
    RELEASE,
    STATE,
    TIMESTAMP,
    Envelope,
    ReleaseStatement,
    Signature,
    StatementInvalid,
    StateStatement,
    TimestampStatement,
    pae,
    read,
    seal,
    signed_by,
)
from tests.registry import signed
from tests.registry.signed import WHEN

KEY = signed.key()
OTHER = signed.key()
STRANGER = signed.key()  # signs, but is never asked about
STATE_STATEMENT = StateStatement(
    extension_type=ExtensionType.TASKSERV,
    name="redis",
    sequence=3,
    releases={"1.0.0": "sha256:" + "ab" * 32},
    yanked=("0.9.0",),
    signed_at=WHEN,
)
LONGEST = (1 << 20) * 4 // 3 + 4  # characters of payload that may be decoded; one more is refused unread


def envelope(payload_type: str, payload: bytes, *signers: Signer) -> Envelope:
    """An envelope as any key holder may write it: the bytes and type given, each signature over their PAE."""
    message = pae(payload_type, payload)
    return Envelope(
        payload_type=payload_type,
        payload=base64.b64encode(payload).decode(),
        signatures=tuple(Signature(key=s.public_key, sig=s.sign(message)) for s in signers),
    )


def _key_with_prefix(prefix: int) -> str:
    """A public key of another nkey kind, its checksum valid: it passes the envelope's pattern, not verify."""
    body = bytes([prefix]) + os.urandom(32)
    return base64.b32encode(body + nkeys.crc16_checksum(body)).decode()


# --- the bytes signed ---


def test_pae_is_dsse_s_encoding_byte_for_byte() -> None:
    """DSSE's own example, and lengths in bytes (not characters) for a type that is not ASCII."""
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("t\u00e9", b"\x00\n ") == b"DSSEv1 3 t\xc3\xa9 3 \x00\n "


def test_seal_signs_the_pae_of_the_statement_s_bytes() -> None:
    sealed = seal(STATE_STATEMENT, [KEY, OTHER])
    payload = base64.b64decode(sealed.payload, validate=True)
    assert sealed.payload_type == STATE == "application/vnd.extension-loader.state.v1+json"
    assert json.loads(payload)["sequence"] == 3
    assert payload == msgspec.json.encode(STATE_STATEMENT, order="deterministic")
    assert [s.key for s in sealed.signatures] == [KEY.public_key, OTHER.public_key]
    for signature, signer in zip(sealed.signatures, (KEY, OTHER), strict=True):
        assert verify(signer.public_key, pae(STATE, payload), signature.sig)
    assert seal(STATE_STATEMENT, []).signatures == ()
    assert sealed.digest() == "sha256:" + hashlib.sha256(payload).hexdigest()


def test_each_kind_has_its_own_versioned_type() -> None:
    stamp = TimestampStatement(issued_at=WHEN, expires_at=WHEN, sequences={"taskserv.redis": 3})
    assert seal(signed.statement(), [KEY]).payload_type == RELEASE == "application/vnd.extension-loader.release.v2+json"
    assert seal(stamp, [KEY]).payload_type == TIMESTAMP == "application/vnd.extension-loader.timestamp.v1+json"


# --- the payload ---


@pytest.mark.parametrize(
    "payload",
    [
        "e30",  # unpadded
        "e30=\n",
        "e3 0=",
        "-_-_",  # the URL-safe alphabet
        "e30=e30=",  # padding inside
        "e30==",  # padding inside the last quantum must be exact
        "\u00e930=",
        "A",
    ],
    ids=["unpadded", "line-end", "a-space", "urlsafe-alphabet", "padding-inside", "over-padded", "not-ascii", "one"],
)
def test_a_payload_that_is_not_strict_base64_is_refused(payload: str) -> None:
    """Only standard base64, padded, with nothing else in it (no line ends, no spaces, no URL-safe alphabet)."""
    bad = Envelope(payload_type=STATE, payload=payload, signatures=())
    with pytest.raises(StatementInvalid) as info:
        bad.payload_bytes()
    assert str(info.value) == "the payload is not base64"
    with pytest.raises(StatementInvalid, match=r"^the payload is not base64\Z"):
        read(bad, StateStatement)
    with pytest.raises(StatementInvalid, match=r"^the payload is not base64\Z"):
        bad.digest()


@pytest.mark.parametrize(
    ("length", "outcome"),
    [
        (LONGEST - 5, "decoded"),
        (LONGEST - 1, "decoded"),  # the longest text that is base64
        (LONGEST, "decoded"),  # padding past a whole quantum is taken (below)
        (LONGEST + 1, "the payload is too long"),
        (LONGEST + 3, "the payload is too long"),  # base64 that would decode
        (2 * LONGEST, "the payload is too long"),
    ],
    ids=["a-quantum-under", "the-longest-base64", "at-the-limit", "one-over", "base64-over", "twice-the-limit"],
)
def test_a_payload_longer_than_the_limit_is_refused_unread(length: int, outcome: str) -> None:
    """The limit is on the text, checked before it is decoded: 4/3 of 1 MiB and 4 characters, so a statement
    of 1 MiB, or 2 bytes more, is read, and nothing longer is decoded."""
    assert LONGEST == 1_398_105
    text = "A" * (length - length % 4) + "=" * (length % 4)
    long = Envelope(payload_type=STATE, payload=text, signatures=())
    if outcome == "decoded":
        assert long.payload_bytes() == bytes(length // 4 * 3)
    else:
        with pytest.raises(StatementInvalid) as info:
            long.payload_bytes()
        assert str(info.value) == outcome


def test_padding_past_a_whole_quantum_spells_the_same_statement() -> None:
    """What is verified is the bytes decoded: another spelling of them is the same statement, with the same digest
    and the same signers, never another one."""
    sealed = envelope(STATE, b"{}\n", KEY)
    assert sealed.payload == "e30K"
    respelled = msgspec.structs.replace(sealed, payload="e30K==")
    assert respelled.payload_bytes() == b"{}\n"
    assert respelled.digest() == sealed.digest()
    assert signed_by(respelled, [KEY.public_key]) == {KEY.public_key}


# --- who signed ---


def test_signed_by_names_the_asked_keys_whose_signature_verifies() -> None:
    sealed = envelope(STATE, b"{}", KEY, OTHER, STRANGER)
    assert signed_by(sealed, [KEY.public_key, OTHER.public_key]) == {KEY.public_key, OTHER.public_key}
    assert signed_by(sealed, [OTHER.public_key]) == {OTHER.public_key}
    assert signed_by(sealed, iter([KEY.public_key])) == {KEY.public_key}  # any iterable, read once
    assert signed_by(sealed, []) == set()


def test_a_key_asked_about_that_did_not_sign_is_not_named() -> None:
    unknown = Signer.from_seed(new_seed()).public_key
    assert signed_by(envelope(STATE, b"{}", KEY), [unknown, KEY.public_key]) == {KEY.public_key}
    assert signed_by(envelope(STATE, b"{}"), [KEY.public_key]) == set()


def test_a_signature_verifies_only_over_its_own_type_and_bytes() -> None:
    sealed = envelope(STATE, b'{"a":1}', KEY)
    keys = [KEY.public_key]
    assert signed_by(msgspec.structs.replace(sealed, payload_type=TIMESTAMP), keys) == set()
    assert signed_by(msgspec.structs.replace(sealed, payload=base64.b64encode(b'{"a":2}').decode()), keys) == set()
    moved = msgspec.structs.replace(sealed, signatures=(Signature(key=OTHER.public_key, sig=sealed.signatures[0].sig),))
    assert signed_by(moved, [KEY.public_key, OTHER.public_key]) == set()  # a signature claimed by another key


def test_a_key_named_twice_counts_once_and_a_bad_copy_hides_no_good_one() -> None:
    good = envelope(STATE, b"{}", KEY)
    bad = Signature(key=KEY.public_key, sig=OTHER.sign(pae(STATE, b"{}")))
    for signatures in [(bad, *good.signatures), (*good.signatures, bad), good.signatures * 2]:
        twice = msgspec.structs.replace(good, signatures=signatures)
        assert signed_by(twice, [KEY.public_key, KEY.public_key]) == {KEY.public_key}
    assert signed_by(msgspec.structs.replace(good, signatures=(bad, bad)), [KEY.public_key]) == set()


@pytest.mark.parametrize(
    "prefix",
    [nkeys.PREFIX_BYTE_USER, nkeys.PREFIX_BYTE_ACCOUNT, nkeys.PREFIX_BYTE_SERVER],
    ids=["user-key", "account-key", "server-key"],
)
def test_a_malformed_key_verifies_nothing_and_stops_no_other(prefix: int) -> None:
    """A key verify refuses (a user key, an account's, a server's) is skipped, even asked about, and the
    signatures after it are still verified."""
    malformed = _key_with_prefix(prefix)
    good = envelope(STATE, b"{}", KEY)
    first = Signature(key=malformed, sig=good.signatures[0].sig)
    mixed = msgspec.structs.replace(good, signatures=(first, *good.signatures))
    assert signed_by(mixed, [malformed, KEY.public_key]) == {KEY.public_key}
    assert signed_by(mixed, [malformed]) == set()


def test_a_key_with_a_typo_verifies_nothing() -> None:
    typo = KEY.public_key[:-1] + ("A" if KEY.public_key[-1] != "A" else "B")
    good = envelope(STATE, b"{}", KEY)
    claimed = msgspec.structs.replace(good, signatures=(Signature(key=typo, sig=good.signatures[0].sig),))
    assert signed_by(claimed, [typo, KEY.public_key]) == set()


def test_a_malformed_payload_is_signed_by_nobody() -> None:
    good = envelope(STATE, b"{}", KEY)
    assert signed_by(msgspec.structs.replace(good, payload="e30"), [KEY.public_key]) == set()
    too_long = msgspec.structs.replace(good, payload="A" * (LONGEST + 3))
    assert signed_by(too_long, [KEY.public_key]) == set()


def test_an_envelope_holds_only_its_own_fields() -> None:
    sealed = msgspec.json.encode(envelope(STATE, b"{}", KEY))
    assert msgspec.json.decode(sealed, type=Envelope) == envelope(STATE, b"{}", KEY)
    with pytest.raises(msgspec.ValidationError, match="unknown field `keyid`"):
        msgspec.json.decode(sealed.replace(b'"sig"', b'"keyid":"k","sig"'), type=Envelope)
    with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
        msgspec.json.decode(sealed[:-1] + b',"extra":1}', type=Envelope)
    with pytest.raises(msgspec.ValidationError, match="Expected `str` matching regex"):
        msgspec.json.decode(sealed.replace(KEY.public_key.encode(), KEY.public_key.lower().encode()), type=Envelope)


# --- reading a statement ---


def test_read_gives_back_the_statement_sealed() -> None:
    release = signed.statement(dependencies=["taskserv:etcd@>=3.5"])
    stamp = TimestampStatement(issued_at=WHEN, expires_at=WHEN, sequences={"taskserv.redis": 3})
    assert read(seal(release, [KEY]), ReleaseStatement) == release
    assert read(seal(STATE_STATEMENT, [KEY]), StateStatement) == STATE_STATEMENT
    assert read(seal(stamp, []), TimestampStatement) == stamp


@pytest.mark.parametrize(
    ("payload_type", "kind"),
    [(TIMESTAMP, StateStatement), (STATE, ReleaseStatement), (RELEASE, TimestampStatement), ("", StateStatement)],
    ids=["timestamp-as-state", "state-as-release", "release-as-timestamp", "no-type"],
)
def test_read_refuses_another_payload_type(payload_type: str, kind: type[StateStatement]) -> None:
    payload = msgspec.json.encode(STATE_STATEMENT)
    expected = {StateStatement: STATE, ReleaseStatement: RELEASE, TimestampStatement: TIMESTAMP}[kind]
    with pytest.raises(StatementInvalid) as info:
        read(envelope(payload_type, payload, KEY), kind)
    assert str(info.value) == f"a statement of type {payload_type!r}, where {expected!r} was expected"


def test_read_refuses_a_later_version_of_the_same_kind() -> None:
    later = STATE.replace(".v1+", ".v2+")
    with pytest.raises(StatementInvalid, match=r"^a statement of type '.*\.state\.v2\+json', where"):
        read(envelope(later, msgspec.json.encode(STATE_STATEMENT), KEY), StateStatement)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"extra": 1}, "Object contains unknown field `extra`"),
        ({"sequence": 0}, "Expected `int` >= 1 - at `$.sequence`"),
        ({"releases": {"1.0.0": "sha256:AB"}}, "Expected `str` matching regex"),
        ({"signed_at": "2026-12-01T12:00:00"}, "Expected `datetime` with a timezone component - at `$.signed_at`"),
        ({"name": ""}, "Expected `str` of length >= 1 - at `$.name`"),
    ],
    ids=["unknown-field", "sequence-zero", "bad-digest", "naive-time", "empty-name"],
)
def test_read_refuses_bytes_that_are_not_such_a_statement(change: dict[str, object], reason: str) -> None:
    fields = msgspec.to_builtins(STATE_STATEMENT) | change
    with pytest.raises(StatementInvalid) as info:
        read(envelope(STATE, json.dumps(fields).encode(), KEY), StateStatement)
    assert str(info.value).startswith(f"not a {STATE} statement: {reason}")


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[]", b"{}", b'{"extension_type":"taskserv"}'],
    ids=["empty", "not-json", "a-list", "no-field", "a-type-alone"],
)
def test_read_refuses_what_is_no_statement_at_all(payload: bytes) -> None:
    with pytest.raises(StatementInvalid, match=rf"^not a {STATE.replace('+', '[+]')} statement: \S"):
        read(envelope(STATE, payload, KEY), StateStatement)
