"""The NATS headers of the contract: their names, the content types, and a lookup that ignores letter case.

A request may carry `Content-Type`, `Requester` and the W3C trace headers; a reply always carries
`Content-Type`, and an error reply the `Nats-Service-Error` pair; an event carries `Nats-Msg-Id`. Pure
vocabulary: nothing here sends, receives or decodes anything.
"""

from __future__ import annotations

from collections.abc import Mapping

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_NAMES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

CONTENT_TYPE = "Content-Type"
REQUESTER = "Requester"  # who asked, for the audit lines; the extension-loader client sends its name@host
MSG_ID = "Nats-Msg-Id"
STREAM = "Nats-Stream"  # on a message a JetStream stream hands out (a direct get's answer), never on an event
STATUS = "Status"  # nats-py's name for a status line (a pull request's 404/408), never on an event
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
TRACE_HEADERS = ("traceparent", "tracestate")


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header's value, whatever the letter case the sender used."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, val in headers.items():
        if key.lower() == lower:
            return val
    return None
