"""Property tests of `service.wire.codec.decode` over every request struct of `service.contract.messages`.

Whatever a requester sends, decoding either returns an instance of the request struct or raises
`InvalidRequest` (which the NATS boundary turns into an `invalid_request` reply); any other exception would
be a bug. Valid requests decode the same from JSON and MessagePack, with the extension type in its canonical
lower-case singular spelling, and whatever decodes keeps the contract's rules for names, types and versions.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, TypeVar, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.contract.errors import InvalidRequest
from service.contract.messages import (
    NAME_PATTERN,
    TYPE_PATTERN,
    VERSION_PATTERN,
    DiscoverRequest,
    EmptyRequest,
    ExtensionType,
    GraphRequest,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)
from service.wire import codec
from service.wire.codec import Codec

R = TypeVar("R", bound=msgspec.Struct)

REQUESTS: list[type[msgspec.Struct]] = [
    LoadRequest,
    ReloadRequest,
    ListRequest,
    StatusRequest,
    DiscoverRequest,
    GraphRequest,
    EmptyRequest,
]
IDS = [kind.__name__ for kind in REQUESTS]
CANONICAL_TYPES = {t.value for t in ExtensionType}

# The contract's rules, written independently of the service: `\Z` (not `$`) so no trailing newline passes.
NAME_RULE = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9._-]{0,63}\Z")
VERSION_RULE = re.compile(r"[0-9A-Za-z.*^~<>=!, +-]{1,64}\Z")

PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def field_names(kind: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(kind))


# --- strategies -------------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=80)
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=20,
)
# MessagePack can carry more than JSON: bytes, timestamps, non-string keys; its integers are at most 64 bits.
MSGPACK_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=80)
    | st.binary(max_size=40)
    | st.datetimes(timezones=st.just(UTC))
)
MSGPACK_VALUES: st.SearchStrategy[Any] = st.recursive(
    MSGPACK_SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=20) | st.integers(-5, 5), children, max_size=5)
    ),
    max_leaves=20,
)

TYPE_BASES = [t.value for t in ExtensionType]


@st.composite
def type_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(a spelling the contract accepts: any case, singular or plural; its canonical singular lower-case)."""
    base = draw(st.sampled_from(TYPE_BASES))
    word = base + ("s" if draw(st.booleans()) else "")
    upper = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if up else c for c, up in zip(word, upper, strict=True)), base


VALID_NAMES = st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda n: len(n) <= 64)
VALID_VERSIONS = st.sampled_from(
    ["1.28.0", "^1.28", "~1.28.0", ">=1.27,<2", "1.28.*", "latest", "*", "1.30.0-rc.1", "1.0.0+build.5"]
) | st.from_regex(VERSION_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 64)


@st.composite
def valid_requests(draw: st.DrawFn, kind: type[msgspec.Struct]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a valid request body for `kind`, the field values it must decode to)."""
    body: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for f in msgspec.structs.fields(kind):
        nullable = type(None) in get_args(f.type)
        if not f.required and draw(st.integers(0, 3)) == 0:
            expected[f.name] = f.default  # absent
            continue
        if nullable and draw(st.integers(0, 4)) == 0:
            body[f.name] = expected[f.name] = None
            continue
        if f.name == "extension_type":
            body[f.name], expected[f.name] = draw(type_spellings())
        elif f.name == "name":
            body[f.name] = expected[f.name] = draw(VALID_NAMES)
        elif f.name == "version":
            body[f.name] = expected[f.name] = draw(VALID_VERSIONS)
        elif f.name == "format":
            body[f.name] = expected[f.name] = draw(st.sampled_from(["json", "dot", "mermaid"]))
        elif f.name == "with_dependencies":
            body[f.name] = expected[f.name] = draw(st.booleans())
        else:  # a field this test does not know yet: make it fail loudly rather than skip it
            raise AssertionError(f"no strategy for {kind.__name__}.{f.name}")
    # the order of the keys on the wire does not matter
    keys = draw(st.permutations(list(body)))
    return {k: body[k] for k in keys}, expected


# Near-valid values: what the patterns admit when they are read loosely (`$` also matches before a final
# newline), the valid ones, and arbitrary text.
NEAR_NAMES = st.from_regex(NAME_PATTERN) | VALID_NAMES | st.text(max_size=70)
NEAR_TYPES = st.from_regex(TYPE_PATTERN) | type_spellings().map(lambda pair: pair[0]) | st.text(max_size=12)
NEAR_VERSIONS = st.from_regex(VERSION_PATTERN) | VALID_VERSIONS | st.text(max_size=70)
NEAR: dict[str, st.SearchStrategy[Any]] = {
    "extension_type": NEAR_TYPES,
    "name": NEAR_NAMES,
    "version": st.none() | NEAR_VERSIONS,
    "format": st.sampled_from(["json", "dot", "mermaid", "JSON", "svg", ""]),
    "with_dependencies": st.booleans(),
}


def encode(value: Any, fmt: Codec) -> bytes:
    if fmt is Codec.MSGPACK:
        return msgspec.msgpack.encode(value)
    return json.dumps(value).encode()


def fits_msgpack(value: Any) -> bool:
    """Whether MessagePack can carry a JSON value (its integers are at most 64 bits)."""
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return True
    if isinstance(value, int):
        return -(2**63) <= value <= 2**64 - 1
    items = value if isinstance(value, list) else value.values()
    return all(fits_msgpack(v) for v in items)


def decode_or_invalid(body: bytes, kind: type[R], fmt: Codec) -> R | None:
    """The decoded request, or None when decode raised InvalidRequest; any other exception propagates."""
    try:
        result = codec.decode(body, kind, fmt)
    except InvalidRequest as exc:
        assert exc.message.strip()
        assert isinstance(exc.details().get("reason"), str)
        # the boundary must be able to send this error back, in either encoding
        for reply_codec in Codec:
            codec.failure(exc, reply_codec)
        return None
    assert isinstance(result, kind)
    return result


# --- properties -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REQUESTS, ids=IDS)
@PROPERTY
@given(body=st.binary(max_size=300), fmt=st.sampled_from(Codec))
@example(body=b"", fmt=Codec.JSON)
@example(body=b" \t\r\n", fmt=Codec.MSGPACK)
@example(body=b"\xc1", fmt=Codec.MSGPACK)
@example(body=b"[" * 10_000, fmt=Codec.JSON)
@example(body=b"\x91" * 10_000 + b"\xc0", fmt=Codec.MSGPACK)
@example(body=b"\xdf\xff\xff\xff\xff", fmt=Codec.MSGPACK)  # a map that claims 4 billion entries
@example(body=b'{"\xff": 1}', fmt=Codec.JSON)  # invalid UTF-8 inside a JSON string
@example(body=b"\x81\xa1\xff\x01", fmt=Codec.MSGPACK)  # invalid UTF-8 inside a MessagePack str
def test_arbitrary_bytes(kind: type[msgspec.Struct], body: bytes, fmt: Codec) -> None:
    decode_or_invalid(body, kind, fmt)


@pytest.mark.parametrize("kind", REQUESTS, ids=IDS)
@PROPERTY
@given(value=JSON_VALUES)
def test_arbitrary_json_values(kind: type[msgspec.Struct], value: Any) -> None:
    decode_or_invalid(encode(value, Codec.JSON), kind, Codec.JSON)
    if fits_msgpack(value):
        decode_or_invalid(encode(value, Codec.MSGPACK), kind, Codec.MSGPACK)


@pytest.mark.parametrize("kind", REQUESTS, ids=IDS)
@PROPERTY
@given(value=MSGPACK_VALUES)
def test_arbitrary_msgpack_values(kind: type[msgspec.Struct], value: Any) -> None:
    decode_or_invalid(encode(value, Codec.MSGPACK), kind, Codec.MSGPACK)


@pytest.mark.parametrize("kind", REQUESTS, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_right_keys_with_arbitrary_values(kind: type[msgspec.Struct], data: st.DataObject) -> None:
    keys = st.sampled_from((*field_names(kind), "nmae"))
    as_json = data.draw(st.dictionaries(keys, JSON_VALUES, max_size=6), label="JSON body")
    decode_or_invalid(encode(as_json, Codec.JSON), kind, Codec.JSON)
    if fits_msgpack(as_json):
        decode_or_invalid(encode(as_json, Codec.MSGPACK), kind, Codec.MSGPACK)
    as_msgpack = data.draw(st.dictionaries(keys, MSGPACK_VALUES, max_size=6), label="MessagePack body")
    decode_or_invalid(encode(as_msgpack, Codec.MSGPACK), kind, Codec.MSGPACK)


@pytest.mark.parametrize("kind", REQUESTS, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_damaged_valid_requests(kind: type[msgspec.Struct], data: st.DataObject) -> None:
    """A valid body truncated, with a byte changed, or with a byte inserted."""
    body, _ = data.draw(valid_requests(kind), label="request")
    fmt = data.draw(st.sampled_from(Codec), label="codec")
    raw = bytearray(encode(body, fmt))
    at = data.draw(st.integers(0, len(raw)), label="at")
    how = data.draw(st.sampled_from(["truncate", "change", "insert"]), label="how")
    byte = data.draw(st.integers(0, 255), label="byte")
    if how == "truncate":
        del raw[at:]
    elif how == "change" and at < len(raw):
        raw[at] = byte
    else:
        raw.insert(at, byte)
    decode_or_invalid(bytes(raw), kind, fmt)


@pytest.mark.parametrize("kind", REQUESTS, ids=IDS)
@PROPERTY
@given(data=st.data())
def test_valid_requests_decode_canonically(kind: type[msgspec.Struct], data: st.DataObject) -> None:
    body, expected = data.draw(valid_requests(kind), label="request")
    from_json = codec.decode(encode(body, Codec.JSON), kind, Codec.JSON)
    from_msgpack = codec.decode(encode(body, Codec.MSGPACK), kind, Codec.MSGPACK)
    assert isinstance(from_json, kind)
    assert from_json == from_msgpack
    assert msgspec.structs.asdict(from_json) == expected
    extension_type = getattr(from_json, "extension_type", None)
    if "extension_type" in body and body["extension_type"] is not None:
        assert extension_type in CANONICAL_TYPES
        assert extension_type == body["extension_type"].lower().removesuffix("s")


def test_empty_bodies_are_empty_requests() -> None:
    """CONTRACT.md: list, discover, cache.clear and stats take an empty body or `{}`."""
    for kind in (ListRequest, DiscoverRequest, EmptyRequest):
        for fmt in Codec:
            for body in (b"", encode({}, fmt)):
                assert codec.decode(body, kind, fmt) == kind()


def check_contract(request: msgspec.Struct, label: str) -> None:
    """A decoded request's name, type and version obey CONTRACT.md."""
    name = getattr(request, "name", None)
    if name is not None:
        assert NAME_RULE.match(name), f"{label}: accepted the name {name!r}"
    extension_type = getattr(request, "extension_type", None)
    if extension_type is not None:
        assert extension_type in CANONICAL_TYPES, f"{label}: extension_type {extension_type!r}"
    version = getattr(request, "version", None)
    if version is not None:
        assert VERSION_RULE.match(version), f"{label}: accepted the version {version!r}"


TYPED = [k for k in REQUESTS if field_names(k)]


@pytest.mark.parametrize("kind", TYPED, ids=[k.__name__ for k in TYPED])
@PROPERTY
@given(data=st.data())
def test_whatever_decodes_keeps_the_contract(kind: type[msgspec.Struct], data: st.DataObject) -> None:
    """Whatever near-valid text was sent, a request that decodes has a valid name, type and version."""
    body = {name: data.draw(NEAR[name], label=name) for name in field_names(kind)}
    for fmt in Codec:
        request = decode_or_invalid(encode(body, fmt), kind, fmt)
        if request is not None:
            check_contract(request, f"{kind.__name__} from {fmt.name}")


NEWLINE_CASES = [(kind, field) for kind in TYPED for field in ("name", "version") if field in field_names(kind)]


@pytest.mark.parametrize(("kind", "field"), NEWLINE_CASES, ids=[f"{k.__name__}.{f}" for k, f in NEWLINE_CASES])
def test_a_trailing_newline_is_not_a_valid_value(kind: type[msgspec.Struct], field: str) -> None:
    """CONTRACT.md: a control character in a name is invalid_request; so is one after a version."""
    valid = {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"}
    body = {k: v for k, v in valid.items() if k in field_names(kind)}
    body[field] += "\n"
    for fmt in Codec:
        with pytest.raises(InvalidRequest) as raised:
            codec.decode(encode(body, fmt), kind, fmt)
        assert raised.value.field == field


def test_timestamp_values_in_msgpack() -> None:
    """MessagePack's timestamp extension is a valid MessagePack value but not a valid field value."""
    body = msgspec.msgpack.encode({"extension_type": "taskserv", "name": datetime(2025, 1, 1, tzinfo=UTC)})
    with pytest.raises(InvalidRequest) as raised:
        codec.decode(body, LoadRequest, Codec.MSGPACK)
    assert raised.value.field == "name"
