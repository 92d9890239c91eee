"""Bodies on the wire: JSON by default, MessagePack when the request says `Content-Type: application/msgpack`.

Decoding turns every msgspec error into `InvalidRequest` with the field and a reason a person can act on;
encoding wraps data in the contract's envelope. Both encodings carry the same types: a timestamp is an RFC 3339
string in MessagePack as in JSON.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

import msgspec

from ..contract.errors import InvalidRequest, LoaderError
from ..contract.headers import CONTENT_TYPE, JSON, MSGPACK, MSGPACK_NAMES, header
from ..contract.messages import ErrorBody, Extension, Failure, Success
from ..core.slices import Steps, deadline, drain

R = TypeVar("R")

_FRIENDLY = {
    "name": "must be 1-64 characters of a-z 0-9 - _ ., start with a letter or digit, and not contain '..'",
    "extension_type": "must be provider, taskserv or cluster (the plural and any letter case are accepted)",
    "version": 'must be a version or constraint such as 1.28.0, ^1.28, ~1.28.0, ">=1.27,<2", 1.28.* or latest',
}
_AT = re.compile(r" - at `\$\.?([^`]*)`$")


class Codec(Enum):
    JSON = JSON
    MSGPACK = MSGPACK

    @classmethod
    def of(cls, headers: Mapping[str, str] | None) -> Codec:
        value = header(headers, CONTENT_TYPE)
        if not value:
            return cls.JSON
        known = _by_content_type.get(value)  # callers send the same few values: parse each once
        if known is None:
            known = cls.MSGPACK if value.split(";")[0].strip().lower() in MSGPACK_NAMES else cls.JSON
            if len(_by_content_type) < 64:
                _by_content_type[value] = known
        return known

    def encode(self, obj: Any) -> bytes:
        return _encoders[self](obj)


_by_content_type: dict[str, Codec] = {}
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def _encode_msgpack(obj: Any) -> bytes:
    """MessagePack with JSON's types. msgspec would write a datetime as MessagePack's timestamp extension,
    which a client built from schemas/ (an RFC 3339 string there) cannot read without custom code; the
    builtins msgspec gives are what its JSON encoder writes (datetimes as RFC 3339 strings, "Z" for UTC)."""
    return _msgpack_encoder.encode(msgspec.to_builtins(obj, str_keys=True))


_encoders = {Codec.JSON: _json_encoder.encode, Codec.MSGPACK: _encode_msgpack}


_decoders: dict[tuple[type[Any], Codec], msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]] = {}


def _decoder(kind: type[Any], codec: Codec) -> msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]:
    decoder = _decoders.get((kind, codec))
    if decoder is None:
        decoder = msgspec.msgpack.Decoder(kind) if codec is Codec.MSGPACK else msgspec.json.Decoder(kind)
        _decoders[(kind, codec)] = decoder
    return decoder


_recent: dict[tuple[type[Any], Codec, bytes], Any] = {}
_RECENT_MAX = 4096
_RECENT_BODY = 512


def decode(body: bytes, kind: type[R], codec: Codec) -> R:
    """Decodes a request body; an empty body is an empty object.

    Orchestrators ask for the same extensions over and over: a small body seen lately is answered from a
    bounded table (requests are frozen, so sharing one is safe), which skips validation's cost."""
    key = (kind, codec, body)
    hit: R | None = _recent.get(key)
    if hit is not None:
        return hit
    result = _decode(body, kind, codec)
    if len(body) <= _RECENT_BODY:
        if len(_recent) >= _RECENT_MAX:
            _recent.clear()
        _recent[key] = result
    return result


def _decode(body: bytes, kind: type[R], codec: Codec) -> R:
    if not body.strip():
        body = b"\x80" if codec is Codec.MSGPACK else b"{}"
    try:
        result: R = _decoder(kind, codec).decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises a bare UnicodeDecodeError for a string that is not UTF-8.
        what = "MessagePack" if codec is Codec.MSGPACK else "JSON"
        raise InvalidRequest(_short(f"the body is not valid {what}: {exc}")) from None
    return result


def _short(text: str, limit: int = 300) -> str:
    """Requesters' own text comes back in errors; a bounded amount of it, so a reply always fits."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _invalid(text: str) -> InvalidRequest:
    at = _AT.search(text)
    where, text = (at.group(1), text[: at.start()]) if at else ("", text)
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", text, flags=re.DOTALL)
    if unknown:
        field = _short(unknown.group(1), 64)
        return InvalidRequest(_short(f"unknown field {unknown.group(1)!r}"), field=field, about_field=False)
    missing = re.fullmatch(r"Object missing required field `(.*)`", text, flags=re.DOTALL)
    if missing:
        return InvalidRequest("a required field is missing", field=missing.group(1))
    if not where:
        return InvalidRequest(_short(text))
    if where in _FRIENDLY and "matching regex" in text:
        text = _FRIENDLY[where]
    return InvalidRequest(_short(text), field=_short(where, 64))


_replies: dict[tuple[int, Codec], tuple[Extension, bytes]] = {}
_REPLIES_MAX = 1024
# Large listings (tuples: the store hands out the same one until something in it changes) are few: a handful of
# their replies are kept, the oldest dropped first (a small one is quick to encode, and kept none: a discover of
# one name, a new tuple each time, must not push a large one out).
_listings: dict[tuple[int, Codec], tuple[tuple[Any, ...], bytes]] = {}
_LISTINGS_MAX = 8
HEAVY_ITEMS = 256  # a reply of at least this many items is encoded a slice at a time
_CHUNK = 64  # items encoded at once in such a reply: a small fraction of a millisecond


def heavy(data: Any) -> bool:
    """Whether encoding `data` takes long enough (about a millisecond and more) to be done a slice at a time."""
    return isinstance(data, list | tuple) and len(data) >= HEAVY_ITEMS


def encoded(data: Any, codec: Codec) -> bool:
    """Whether `success` has this very object's reply at hand (and will not encode it)."""
    table: dict[tuple[int, Codec], Any] = _replies if isinstance(data, Extension) else _listings
    hit = table.get((id(data), codec))
    return hit is not None and hit[0] is data


def success(data: Any, codec: Codec) -> bytes:
    """The success envelope. A cached extension is answered many times over, and an unchanged listing over
    and over: the reply of each is encoded once (the tables hold the object itself, so an id is never reused
    while its entry is there)."""
    if heavy(data):
        return drain(success_steps(data, codec))
    if not isinstance(data, Extension):
        return codec.encode(Success(data=data))
    key = (id(data), codec)
    hit = _replies.get(key)
    if hit is not None and hit[0] is data:
        return hit[1]
    body = codec.encode(Success(data=data))
    if len(_replies) >= _REPLIES_MAX:
        _replies.clear()
    _replies[key] = (data, body)
    return body


def success_steps(data: list[Any] | tuple[Any, ...], codec: Codec) -> Steps[bytes]:
    """The success envelope of a large list, as a step function (see `core.slices`): the items are encoded a
    chunk at a time and joined into the very bytes that encoding them at once gives (a test holds it to that).
    A tuple's reply is kept."""
    key = (id(data), codec)
    hit = _listings.get(key)
    if hit is not None and hit[0] is data:
        return hit[1]
    head, tail = _envelope(codec, len(data))
    parts = [head]
    until = deadline()
    for start in range(0, len(data), _CHUNK):
        chunk = data[start : start + _CHUNK]
        # Each chunk is encoded as an array of its own, whose brackets (or header) are cut off.
        items = codec.encode(chunk)[_array_header_size(codec, len(chunk)) :]
        if codec is Codec.JSON:
            items = items[:-1]
            if start:
                parts.append(b",")
        parts.append(items)
        if time.perf_counter() > until:
            yield
            until = deadline()
    parts.append(tail)
    body = b"".join(parts)
    if isinstance(data, tuple):
        while len(_listings) >= _LISTINGS_MAX:
            del _listings[next(iter(_listings))]
        _listings[key] = (data, body)
    return body


def _envelope(codec: Codec, count: int) -> tuple[bytes, bytes]:
    """What comes before the items of a success envelope of `count` items, and what comes after them."""
    empty = codec.encode(Success(data=()))
    if codec is Codec.JSON:  # {"success":true,"data":[]}
        cut = empty.rindex(b"[]")
        return empty[: cut + 1], empty[cut + 1 :]
    # MessagePack: `data` is the map's last value, an empty array (0x90); the header for `count` items instead.
    assert empty.endswith(b"\x90")
    return empty[:-1] + _msgpack_array_header(count), b""


def _array_header_size(codec: Codec, count: int) -> int:
    if codec is Codec.JSON:
        return 1  # "["
    return len(_msgpack_array_header(count))


def _msgpack_array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def failure(error: LoaderError, codec: Codec) -> bytes:
    body = ErrorBody(code=error.code, message=error.message, details=error.details())  # type: ignore[arg-type]
    return codec.encode(Failure(error=body))
