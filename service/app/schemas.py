"""Generates `schemas/`, the published contract, from the msgspec structs in `service/contract/messages.py`.

    python -m service.app.schemas [OUTDIR]           write what changed (default OUTDIR: schemas)
    python -m service.app.schemas --check [OUTDIR]   exit 1 and list the files that differ (for CI)

One JSON Schema (draft 2020-12, standing alone with its own `$defs`) per request, per subject's reply envelope
and per event, and an AsyncAPI 3.0.0 document of every subject. Every message schema comes from
`msgspec.json.schema_components`; this module only names, composes (`oneOf`) and places them. The subjects
and their request and reply types are the subjects table, `service/contract/subjects.py`, which the wire
serves too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from ..contract.config import load_config
from ..contract.errors import ERROR_CODES
from ..contract.headers import JSON, MSGPACK
from ..contract.messages import DependencyErrorDetails, ErrorBody, Failure, Success
from ..contract.subjects import EVENTS, ROUTES, Route

JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://extension-loader.dev/schemas/"
ASYNCAPI = "asyncapi.json"
GENERATED = (
    "Generated from service/contract/messages.py by `python -m service.app.schemas`; do not edit, run `make schemas`."
)


# ErrorBody's `details` is one free-form object for every code; the codes here have a struct of their own, and
# the schemas say that a body of that code holds it.
ERROR_DETAILS: dict[str, type[msgspec.Struct]] = {"dependency_error": DependencyErrorDetails}

# msgspec names a generic struct after its parameters' qualified names
# ("Success_list_service.contract.replies.Extension__"); the published names drop the module path.
_QUALIFIER = re.compile(re.escape(Success.__module__.rpartition(".")[0]) + r"\.\w+\.")

# --- message schemas ---


def _components(types: Sequence[Any], ref_prefix: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """msgspec's schemas of `types`, with readable definition names and refs under `ref_prefix`; where an
    error envelope is among them, its `details` are described code by code (`ERROR_DETAILS`)."""
    described = list(ERROR_DETAILS.values()) if Failure in types else []
    roots, defs = msgspec.json.schema_components([*types, *described], ref_template=ref_prefix + "{name}")
    roots = roots[: len(types)]
    names = {name: _QUALIFIER.sub("", name) for name in defs}
    if len(set(names.values())) != len(names):
        raise RuntimeError(f"two schema definitions would share a name: {sorted(names)}")

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            out = {key: rename(value) for key, value in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith(ref_prefix):
                out["$ref"] = ref_prefix + names[ref[len(ref_prefix) :]]
            if isinstance(out.get("title"), str):
                out["title"] = _QUALIFIER.sub("", out["title"])
            return out
        if isinstance(node, list | tuple):
            return [rename(item) for item in node]
        return node

    out = {names[name]: rename(body) for name, body in defs.items()}
    if described:
        out[ErrorBody.__name__]["allOf"] = [
            {
                "if": {"properties": {"code": {"const": code}}, "required": ["code"]},
                "then": {"properties": {"details": {"$ref": ref_prefix + kind.__name__}}, "required": ["details"]},
            }
            for code, kind in ERROR_DETAILS.items()
        ]
    return [rename(root) for root in roots], out


def _reply_types(route: Route) -> list[Any]:
    return [*(Success[data] for data in route.data), Failure]  # type: ignore[valid-type]


def _standalone(file: str, types: Sequence[Any], title: str, description: str) -> dict[str, Any]:
    """A draft 2020-12 schema of one of `types` (of the only one, if one), with every definition it needs."""
    roots, defs = _components(types, "#/$defs/")
    body: dict[str, Any] = roots[0] if len(roots) == 1 else {"oneOf": roots}
    return {
        "$schema": JSON_SCHEMA,
        "$id": BASE_ID + file,
        "$comment": GENERATED,
        "title": title,
        "description": description,
        **body,
        "$defs": defs,
    }


def message_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every request, every subject's reply and every event."""
    prefix = _defaults().prefix
    out: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        name = route.request.__name__
        out[f"{name}.json"] = _standalone(f"{name}.json", [route.request], name, _doc(route.request) or route.summary)
    for route in ROUTES:
        out[route.reply_file] = _standalone(
            route.reply_file,
            _reply_types(route),
            f"{prefix}.{route.suffix} reply",
            f"The reply on {prefix}.{route.suffix}: a success envelope with its data, or a failure envelope.",
        )
    for event in EVENTS:
        name = event.event.__name__
        out[f"{name}.json"] = _standalone(f"{name}.json", [event.event], name, event.summary)
    return out


# --- AsyncAPI ---


@dataclass(frozen=True, slots=True)
class _Defaults:
    prefix: str
    queue_group: str
    url: str


def _defaults() -> _Defaults:
    nats = load_config(environ={}).nats
    return _Defaults(prefix=nats.subject_prefix, queue_group=nats.queue_group, url=nats.url)


def _version() -> str:
    try:
        return metadata.version("extension-loader")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def _doc(kind: type[Any]) -> str:
    return " ".join((kind.__doc__ or "").split())


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
    d = _defaults()
    ref = "#/components/schemas/"
    requests = list(dict.fromkeys(route.request for route in ROUTES))
    replies = [_reply_types(route) for route in ROUTES]
    types = [*requests, *(t for group in replies for t in group), *(e.event for e in EVENTS)]
    roots, schemas = _components(types, ref)
    root_of = dict(zip(map(repr, types), roots, strict=True))

    messages: dict[str, Any] = {}
    for request in requests:
        name = request.__name__
        messages[name] = {
            "name": name,
            "title": name,
            "summary": _doc(request),
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


# --- files ---


def render(document: dict[str, Any]) -> bytes:
    """Deterministic bytes: sorted keys, two-space indent, a trailing newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def generate() -> dict[str, bytes]:
    """File name -> the bytes the code says it should hold."""
    files = {name: render(schema) for name, schema in message_schemas().items()}
    files[ASYNCAPI] = render(asyncapi())
    return dict(sorted(files.items()))


def differences(outdir: Path, files: dict[str, bytes] | None = None) -> list[str]:
    """What in `outdir` differs from the generated files: 'NAME: differs|missing|not generated'."""
    files = generate() if files is None else files
    problems = []
    for name, data in files.items():
        path = outdir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_bytes() != data:
            problems.append(f"{path}: differs")
    problems += [f"{path}: not generated" for path in _stale(outdir, files)]
    return problems


def write(outdir: Path) -> list[str]:
    """Writes the files whose content changed and removes stale `*.json`; returns what it did."""
    files = generate()
    outdir.mkdir(parents=True, exist_ok=True)
    done = []
    for name, data in files.items():
        path = outdir / name
        if not path.is_file() or path.read_bytes() != data:
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            done.append(f"wrote {path}")
    for path in _stale(outdir, files):
        path.unlink()
        done.append(f"removed {path}")
    return done


def _stale(outdir: Path, files: Iterable[str]) -> list[Path]:
    # The folder belongs to the generator: a `*.json` it does not write is a message that no longer exists.
    if not outdir.is_dir():
        return []
    return sorted(path for path in outdir.glob("*.json") if path.name not in set(files))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.app.schemas", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("outdir", nargs="?", default="schemas", type=Path, help="default: schemas")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any file differs")
    args = parser.parse_args(argv)
    outdir: Path = args.outdir
    if args.check:
        problems = differences(outdir)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{outdir} is not what the code generates: run `make schemas`", file=sys.stderr)
            return 1
        print(f"{outdir}: up to date")
        return 0
    done = write(outdir)
    for line in done:
        print(line)
    if not done:
        print(f"{outdir}: up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
