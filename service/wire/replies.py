"""What goes back to a requester: the success envelope within the server's max_payload, and the failure
envelope with the `Nats-Service-Error` headers.

`failure` is where any exception becomes an error reply: a `LoaderError` speaks for itself; anything else is
a defect, logged here with its traceback and answered as an internal error, so no traceback reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from ..contract.errors import LoaderError, LoadFailed
from ..contract.headers import CONTENT_TYPE, SERVICE_ERROR, SERVICE_ERROR_CODE
from . import codec
from .frames import header_block

log = logging.getLogger(__name__)

OK_HEADERS = {encoding: {CONTENT_TYPE: encoding.value} for encoding in codec.Codec}
_OK_BLOCKS = [(headers, header_block(headers)) for headers in OK_HEADERS.values()]  # the same, as sent


def ok_block(headers: dict[str, str]) -> bytes | None:
    """The ready-made header block when `headers` are a success reply's (these very dicts: they never change);
    None for any other, an error reply's, whose headers differ each time."""
    for ok, block in _OK_BLOCKS:
        if headers is ok:
            return block
    return None


def refused_reply(reply: str, prefixes: tuple[str, ...]) -> str | None:
    """Why a reply subject is not answered, or None when it may be: the service answers only into a
    requester's inbox or a reply mapped through a service import (`nats.reply_prefixes`). NATS checks no
    permission on a reply subject, and `allow_responses` would let the service publish its answer anywhere,
    onto an event or request subject included."""
    if reply.startswith(prefixes):
        return None
    return f"reply subject {reply!r} is not an inbox ({', '.join(prefixes)}): not answered"


def success(data: Any, encoding: codec.Codec, max_payload: int) -> bytes:
    """The success envelope; LoadFailed when it is larger than the server would take."""
    return sized(codec.success(data, encoding), max_payload)


def sized(body: bytes, max_payload: int) -> bytes:
    """The body, or LoadFailed when it is larger than the server would take."""
    if len(body) > max_payload:
        raise LoadFailed(
            f"the reply ({len(body)} bytes) is larger than the NATS server's max_payload "
            f"({max_payload} bytes); narrow the request"
        )
    return body


def failure(exc: Exception, subject: str, encoding: codec.Codec) -> tuple[LoaderError, bytes, dict[str, str]]:
    """The error a request failed with (an unexpected exception becomes an internal error, logged with its
    traceback, which never reaches the client), its failure envelope and its headers."""
    if isinstance(exc, LoaderError):
        err = exc
    else:
        log.exception("unexpected error while handling %s", subject)
        err = LoadFailed(f"internal error ({type(exc).__name__}); see the service log")
    headers = {
        CONTENT_TYPE: encoding.value,
        SERVICE_ERROR: _header_safe(err.message),
        SERVICE_ERROR_CODE: str(err.status),
    }
    return err, codec.failure(err, encoding), headers


def _header_safe(text: str) -> str:
    # A header value is one line of printable text.
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:512]
