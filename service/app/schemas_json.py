"""The JSON Schemas of `schemas/`: one per request, per subject's reply envelope and per event, each a draft
2020-12 schema standing alone with its own `$defs`.

Every message schema comes from `msgspec.json.schema_components`; this module only names, composes (`oneOf`)
and places them, and describes the `details` of the error codes that have a struct of their own. The subjects
and their request and reply types are the subjects table, `service/contract/subjects.py`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ..contract.config import load_config
from ..contract.messages import DependencyErrorDetails, ErrorBody, Failure, Success
from ..contract.subjects import EVENTS, ROUTES, Route

JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://extension-loader.dev/schemas/"
GENERATED = (
    "Generated from service/contract/messages.py by `python -m service.app.schemas`; do not edit, run `make schemas`."
)

# ErrorBody's `details` is one free-form object for every code; the codes here have a struct of their own, and
# the schemas say that a body of that code holds it.
ERROR_DETAILS: dict[str, type[msgspec.Struct]] = {"dependency_error": DependencyErrorDetails}

# msgspec names a generic struct after its parameters' qualified names
# ("Success_list_service.contract.replies.Extension__"); the published names drop the module path.
_QUALIFIER = re.compile(re.escape(Success.__module__.rpartition(".")[0]) + r"\.\w+\.")


@dataclass(frozen=True, slots=True)
class Defaults:
    """What the documents show of the configuration: its defaults (the subjects are written with them)."""

    prefix: str
    queue_group: str
    url: str


def defaults() -> Defaults:
    nats = load_config(environ={}).nats
    return Defaults(prefix=nats.subject_prefix, queue_group=nats.queue_group, url=nats.url)


def doc(kind: type[Any]) -> str:
    """A struct's docstring on one line: its description in the documents."""
    return " ".join((kind.__doc__ or "").split())


def components(types: Sequence[Any], ref_prefix: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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


def reply_types(route: Route) -> list[Any]:
    return [*(Success[data] for data in route.data), Failure]  # type: ignore[valid-type]


def _standalone(file: str, types: Sequence[Any], title: str, description: str) -> dict[str, Any]:
    """A draft 2020-12 schema of one of `types` (of the only one, if one), with every definition it needs."""
    roots, defs = components(types, "#/$defs/")
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
    prefix = defaults().prefix
    out: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        name = route.request.__name__
        out[f"{name}.json"] = _standalone(f"{name}.json", [route.request], name, doc(route.request) or route.summary)
    for route in ROUTES:
        out[route.reply_file] = _standalone(
            route.reply_file,
            reply_types(route),
            f"{prefix}.{route.suffix} reply",
            f"The reply on {prefix}.{route.suffix}: a success envelope with its data, or a failure envelope.",
        )
    for event in EVENTS:
        name = event.event.__name__
        out[f"{name}.json"] = _standalone(f"{name}.json", [event.event], name, event.summary)
    return out
