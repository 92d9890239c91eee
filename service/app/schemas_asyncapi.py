"""The AsyncAPI 3.0.0 document of `schemas/` (`asyncapi.json`): every subject of the subjects table, its
operation (received in the queue group, received by every instance, or sent), its messages and their headers,
with the message schemas of `schemas_json.py` as its components.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from ..contract.errors import ERROR_CODES
from ..contract.headers import JSON, MSGPACK
from ..contract.subjects import EVENTS, ROUTES
from .schemas_json import BASE_ID, GENERATED, components, defaults, doc, reply_types

ASYNCAPI = "asyncapi.json"


def _version() -> str:
    try:
        return metadata.version("extension-loader")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def _camel(suffix: str) -> str:
    head, *rest = suffix.split(".")
    return head + "".join(part.capitalize() for part in rest)


_TRACE_HEADERS: dict[str, Any] = {
    "traceparent": {
        "type": "string",
        "description": "W3C Trace Context parent of the span",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    },
    "tracestate": {"type": "string", "description": "W3C Trace Context vendor state, where present"},
}


def _request_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "Content-Type": {
                "type": "string",
                "description": f"{MSGPACK} for a MessagePack body (answered in MessagePack); otherwise JSON",
                "examples": [JSON, MSGPACK],
            },
            **_TRACE_HEADERS,
        },
    }


def _channel(subject: str, summary: str, server: Any, message: str) -> dict[str, Any]:
    """A channel at a subject that carries one message of components.messages."""
    return {
        "address": subject,
        "title": subject,
        "summary": summary,
        "servers": server,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }


def _reply_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["Content-Type"],
        "properties": {
            "Content-Type": {"type": "string", "enum": [JSON, MSGPACK], "description": "the body's encoding"},
            "Nats-Service-Error": {"type": "string", "description": "on a failure: the error message"},
            "Nats-Service-Error-Code": {
                "type": "string",
                "enum": sorted({str(status) for status in ERROR_CODES.values()}),
                "description": "on a failure: the error's number ("
                + ", ".join(f"{code} {status}" for code, status in ERROR_CODES.items())
                + ")",
            },
        },
    }


def _event_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["Nats-Msg-Id"],
        "properties": {
            "Nats-Msg-Id": {
                "type": "string",
                "description": "the event's event_id; JetStream drops duplicates",
            },
            "Content-Type": {"type": "string", "const": JSON},
            **_TRACE_HEADERS,
        },
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document: every subject, its operation, messages and their schemas."""
    d = defaults()
    ref = "#/components/schemas/"
    requests = list(dict.fromkeys(route.request for route in ROUTES))
    replies = [reply_types(route) for route in ROUTES]
    types = [*requests, *(t for group in replies for t in group), *(e.event for e in EVENTS)]
    roots, schemas = components(types, ref)
    root_of = dict(zip(map(repr, types), roots, strict=True))

    messages: dict[str, Any] = {}
    for request in requests:
        name = request.__name__
        messages[name] = {
            "name": name,
            "title": name,
            "summary": doc(request),
            "contentType": JSON,
            "headers": _request_headers(),
            "payload": root_of[repr(request)],
        }
        if all(f.required is False for f in msgspec.structs.fields(request)):
            messages[name]["description"] = "Every field is optional: an empty body means `{}`."
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    server = [{"$ref": "#/servers/nats"}]
    for route, group in zip(ROUTES, replies, strict=True):
        cid = _camel(route.suffix)
        subject = f"{d.prefix}.{route.suffix}"
        request_name = route.request.__name__
        reply_name = f"{cid[0].upper()}{cid[1:]}Reply"
        messages[reply_name] = {
            "name": reply_name,
            "title": f"{subject} reply",
            "summary": "A success envelope with its data, or a failure envelope, on the requester's inbox.",
            "contentType": JSON,
            "headers": _reply_headers(),
            "payload": {"oneOf": [root_of[repr(t)] for t in group]},
        }
        channels[cid] = _channel(subject, route.summary, server, request_name)
        channels[f"{cid}Reply"] = {
            "address": None,
            "title": f"{subject} reply",
            "description": "The reply subject (inbox) that the requester sent with its request.",
            "servers": server,
            "messages": {reply_name: {"$ref": f"#/components/messages/{reply_name}"}},
        }
        operations[cid] = {
            "action": "receive",
            "title": f"process {subject}",
            "summary": route.summary,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{request_name}"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{cid}Reply"},
                "messages": [{"$ref": f"#/channels/{cid}Reply/messages/{reply_name}"}],
            },
        }
        if route.queue:
            operations[cid]["bindings"] = {"nats": {"queue": d.queue_group, "bindingVersion": "0.1.0"}}
        else:
            operations[cid]["description"] = (
                "Served outside the queue group: every instance answers. Gather the replies on one inbox until "
                "a deadline (`nats request --replies 0`, `extension-loader ... --all`)."
            )
    for event in EVENTS:
        subject = f"{d.prefix}.{event.suffix}"
        name = event.event.__name__
        messages[name] = {
            "name": name,
            "title": name,
            "summary": event.summary,
            "contentType": JSON,
            "headers": _event_headers(),
            "payload": root_of[repr(event.event)],
        }
        channels[event.suffix] = _channel(subject, event.summary, server, name)
        operations[f"send{event.suffix.capitalize()}"] = {
            "action": "send",
            "title": f"send {subject}",
            "summary": event.summary,
            "channel": {"$ref": f"#/channels/{event.suffix}"},
            "messages": [{"$ref": f"#/channels/{event.suffix}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "id": BASE_ID + ASYNCAPI,
        "info": {
            "title": "extension-loader",
            "version": _version(),
            "description": (
                "Loads infrastructure extensions (providers, taskservs, clusters) through Nushell, caches "
                "them, and serves them over NATS. Subjects are shown with the default prefix "
                f"`{d.prefix}` (configurable); requests are served in the queue group `{d.queue_group}`, "
                f"except those under `{d.prefix}.all.`, which every instance answers. "
                f"Bodies are JSON, or MessagePack when a request says `Content-Type: {MSGPACK}`. {GENERATED}"
            ),
        },
        "defaultContentType": JSON,
        "servers": {
            "nats": {
                "host": d.url.removeprefix("nats://"),
                "protocol": "nats",
                "description": f"The NATS server of `make run` ({d.url}).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
