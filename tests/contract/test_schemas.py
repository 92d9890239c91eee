"""The published contract in `schemas/`: what the code generates, valid, and true to what the service sends.

No network and no NATS: messages are built as structs and encoded as the service encodes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import msgspec
import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from nats.aio.client import Client

from service.app import schemas
from service.app.schemas_asyncapi import asyncapi
from service.app.schemas_json import message_schemas
from service.contract.config import load_config
from service.contract.errors import (
    ERROR_CODES,
    DependencyError,
    InvalidExtension,
    InvalidRequest,
    LoaderError,
    LoadFailed,
    LoadTimeout,
    NotFound,
    Unavailable,
    UntrustedExtension,
    VersionNotFound,
)
from service.contract.messages import (
    Available,
    CacheStats,
    Cleared,
    DiscoverRequest,
    EmptyRequest,
    Event,
    Extension,
    ExtensionLoaded,
    ExtensionMetadata,
    ExtensionType,
    ExtensionUnloaded,
    Graph,
    GraphEdge,
    GraphNode,
    GraphRequest,
    GraphText,
    InstanceReply,
    ListRequest,
    LoadRequest,
    LoadStats,
    MissingDependency,
    NushellInfo,
    ReloadRequest,
    Stats,
    Status,
    StatusRequest,
)
from service.contract.subjects import EVENTS, ROUTES
from service.core.manager import ExtensionManager
from service.wire.codec import Codec, failure, success
from service.wire.events import EventPublisher
from service.wire.service import ExtensionService

CHECKED_IN = Path(__file__).resolve().parents[2] / "schemas"
SCHEMAS = message_schemas()
SUBJECTS = [
    "extensions.load",
    "extensions.reload",
    "extensions.list",
    "extensions.status",
    "extensions.discover",
    "extensions.cache.clear",
    "extensions.stats",
    "extensions.graph",
]
FLEET_SUBJECTS = ["extensions.all.list", "extensions.all.status", "extensions.all.cache.clear", "extensions.all.stats"]
EVENT_SUBJECTS = ["extensions.loaded", "extensions.unloaded"]


def validator(file: str) -> Any:
    return Draft202012Validator(SCHEMAS[file], format_checker=Draft202012Validator.FORMAT_CHECKER)


def wire(obj: Any) -> Any:
    """What a subscriber parses: the struct encoded with msgspec, decoded as plain JSON."""
    return json.loads(msgspec.json.encode(obj))


# --- (a) the checked-in files are what the code generates ------------------------------------------------


def test_checked_in_schemas_are_what_the_code_generates(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    generated = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    checked_in = {path.name: path.read_bytes() for path in CHECKED_IN.iterdir() if path.is_file()}
    missing = sorted(generated.keys() - checked_in.keys())
    extra = sorted(checked_in.keys() - generated.keys())
    differ = sorted(name for name in generated.keys() & checked_in.keys() if generated[name] != checked_in[name])
    assert not (missing or extra or differ), (
        "schemas/ is not what service/contract/messages.py generates: run `make schemas` and commit the result "
        f"(missing: {missing}, not generated: {extra}, differ: {differ})"
    )


def test_generation_is_deterministic_and_check_mode_finds_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = schemas.write(tmp_path)
    assert len(first) == len(SCHEMAS) + 1
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert schemas.write(tmp_path) == [], "a second run must write nothing"
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert all(data.endswith(b"}\n") and b'\n  "' in data for data in before.values())
    assert schemas.main(["--check", str(tmp_path)]) == 0

    (tmp_path / "load.reply.json").write_text("{}\n")
    (tmp_path / "Gone.json").write_text("{}\n")
    (tmp_path / "LoadRequest.json").unlink()
    capsys.readouterr()
    assert schemas.main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "load.reply.json: differs" in err
    assert "Gone.json: not generated" in err
    assert "LoadRequest.json: missing" in err
    assert "run `make schemas`" in err

    assert schemas.main([str(tmp_path)]) == 0
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_the_subject_table_agrees_with_the_server() -> None:
    config = load_config(environ={})
    manager = cast(ExtensionManager, SimpleNamespace(instance_id="SCHEMA-TEST", releases=None))
    service = ExtensionService(config, manager, version="0.0.0")
    served = {endpoint.subject: endpoint.request for endpoint in service.endpoints}
    assert served == {f"extensions.{route.suffix}": route.request for route in ROUTES}
    queued = {endpoint.subject: endpoint.stats.queue_group for endpoint in service.endpoints}
    assert queued == {f"extensions.{route.suffix}": "extension-loader" if route.queue else "" for route in ROUTES}
    unqueued = [s for s, group in queued.items() if not group]
    assert unqueued == [f"extensions.{route.suffix}" for route in ROUTES if route.twin]
    assert [s for s in unqueued if s in FLEET_SUBJECTS] == FLEET_SUBJECTS

    publisher = EventPublisher(cast(Client, None), config.nats.subject_prefix)
    samples: tuple[Event, ...] = (LOADED, UNLOADED)
    for event, sample in zip(EVENTS, samples, strict=True):
        assert isinstance(sample, event.event)
        assert publisher.subject(sample) == f"extensions.{event.suffix}"


# --- (b) every file is a valid schema, (d) the AsyncAPI document ------------------------------------------


def test_the_files_are_the_contract_s_messages() -> None:
    """One file per request, per subject's reply and per event of the subjects table, and those of CONTRACT.md
    among them (the table is held against CONTRACT.md in test_subjects.py)."""
    requests = {f"{kind.__name__}.json" for kind in (LoadRequest, ReloadRequest, ListRequest, StatusRequest)}
    requests |= {f"{kind.__name__}.json" for kind in (DiscoverRequest, GraphRequest, EmptyRequest)}
    replies = {f"{subject.removeprefix('extensions.')}.reply.json" for subject in SUBJECTS + FLEET_SUBJECTS}
    events = {"ExtensionLoaded.json", "ExtensionUnloaded.json"}
    assert requests | replies | events <= set(SCHEMAS)
    in_the_table = {f"{route.request.__name__}.json" for route in ROUTES} | {route.reply_file for route in ROUTES}
    in_the_table |= {f"{event.event.__name__}.json" for event in EVENTS}
    assert set(SCHEMAS) == in_the_table


@pytest.mark.parametrize("file", sorted(SCHEMAS))
def test_each_file_is_a_valid_draft_2020_12_schema(file: str) -> None:
    schema = SCHEMAS[file]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{file}")
    assert "$defs" in schema
    refs = set(_refs(schema))
    assert refs, "the root refers to its definitions"
    assert all(ref.removeprefix("#/$defs/") in schema["$defs"] for ref in refs)


def test_asyncapi_has_every_subject_and_its_operation() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "extension-loader"
    assert (doc["servers"]["nats"]["host"], doc["servers"]["nats"]["protocol"]) == ("127.0.0.1:4222", "nats")
    by_address = {channel["address"]: cid for cid, channel in doc["channels"].items()}
    assert set(SUBJECTS + EVENT_SUBJECTS) <= set(by_address)
    operations = {op["channel"]["$ref"].removeprefix("#/channels/"): op for op in doc["operations"].values()}
    for subject in SUBJECTS:
        op = operations[by_address[subject]]
        assert op["action"] == "receive"
        assert op["bindings"]["nats"]["queue"] == "extension-loader"
        reply = doc["channels"][op["reply"]["channel"]["$ref"].removeprefix("#/channels/")]
        (message,) = reply["messages"].values()
        headers = _resolve(doc, message["$ref"])["headers"]["properties"]
        assert {"Content-Type", "Nats-Service-Error", "Nats-Service-Error-Code"} <= set(headers)
    for subject in FLEET_SUBJECTS:
        op = operations[by_address[subject]]
        assert op["action"] == "receive" and "reply" in op
        assert "bindings" not in op, "every instance answers: no queue group"
        assert "every instance answers" in op["description"]
    for subject in EVENT_SUBJECTS:
        op = operations[by_address[subject]]
        assert op["action"] == "send"
        message = _resolve(doc, op["messages"][0]["$ref"])
        assert {"Nats-Msg-Id", "traceparent", "tracestate"} <= set(message["headers"]["properties"])


def test_asyncapi_references_resolve_and_its_schemas_are_valid() -> None:
    doc = asyncapi()
    for ref in _refs(doc):
        _resolve(doc, ref)
    for schema in doc["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)  # AsyncAPI's default schema format is a superset of draft 7
    for op in doc["operations"].values():
        # AsyncAPI 3: an operation's messages are its channel's messages.
        channel = op["channel"]["$ref"]
        assert all(m["$ref"].startswith(f"{channel}/messages/") for m in op["messages"])
        if "reply" in op:
            channel = op["reply"]["channel"]["$ref"]
            assert all(m["$ref"].startswith(f"{channel}/messages/") for m in op["reply"]["messages"])


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    """The object a local `$ref` points to, following a reference to a reference."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if isinstance(node, dict) and set(node) == {"$ref"}:
        return _resolve(doc, node["$ref"])
    return node


# --- (c) real messages validate; bad requests are rejected as msgspec rejects them ------------------------

METADATA = ExtensionMetadata(
    name="kubernetes",
    version="1.28.0",
    description="Kubernetes container orchestrator",
    extension_type=ExtensionType.TASKSERV,
    dependencies=("containerd", "etcd@^3.5", "provider:aws"),
    author="provisioning-team",
)
EXTENSION = Extension(
    metadata=METADATA,
    path="/data/extensions/taskserv/kubernetes/1.28.0",
    loaded_at=datetime(2025, 10, 6, 12, 30, tzinfo=UTC),
    digest="sha256:" + "ab" * 32,
)
AVAILABLE = Available(
    extension_type=ExtensionType.TASKSERV, name="kubernetes", versions=("1.29.2", "1.28.0"), latest=METADATA
)
STATS = Stats(
    cache=CacheStats(size=3, capacity=100, hits=10, misses=3, hit_ratio=0.77, evictions=0),
    loads=LoadStats(total=13, cold=3, failed=1, coalesced=2),
    in_flight=0,
    nushell=NushellInfo(path="/usr/bin/nu", version="0.108.0"),
    instance_id="ABC123",
    uptime_s=12.5,
)
GRAPH = Graph(
    nodes=(
        GraphNode(id="taskserv:etcd:3.5.9", extension_type=ExtensionType.TASKSERV, name="etcd", version="3.5.9"),
        GraphNode(
            id="taskserv:kubernetes:1.28.0",
            extension_type=ExtensionType.TASKSERV,
            name="kubernetes",
            version="1.28.0",
        ),
    ),
    edges=(GraphEdge(from_="taskserv:kubernetes:1.28.0", to="taskserv:etcd:3.5.9"),),
    order=("taskserv:etcd:3.5.9", "taskserv:kubernetes:1.28.0"),
)
LOADED = ExtensionLoaded(
    event_id="01JABCDEF",
    reason="load",
    extension=EXTENSION,
    cold=True,
    duration_ms=31.5,
    instance_id="ABC123",
    timestamp=datetime(2025, 10, 6, 12, 30, 1, tzinfo=UTC),
)
UNLOADED = ExtensionUnloaded(
    event_id="01JABCDEG",
    reason="evicted",
    extension_type=ExtensionType.TASKSERV,
    name="kubernetes",
    version="1.28.0",
    instance_id="ABC123",
    timestamp=datetime(2025, 10, 6, 12, 31, tzinfo=UTC),
)
REPLY_DATA: list[tuple[str, Any]] = [
    ("load", EXTENSION),
    ("reload", EXTENSION),
    ("list", [EXTENSION]),
    ("list", []),
    ("status", Status(loaded=True, versions=("1.28.0",))),
    ("status", Status(loaded=False, versions=())),
    ("discover", [AVAILABLE]),
    ("cache.clear", Cleared(cleared=3)),
    ("stats", STATS),
    ("graph", GRAPH),
    ("graph", GraphText(text="graph LR\n  n0 --> n1\n")),
    ("all.list", InstanceReply(instance_id="A", data=[EXTENSION])),
    ("all.list", InstanceReply(instance_id="B", data=[])),
    ("all.status", InstanceReply(instance_id="A", data=Status(loaded=True, versions=("1.28.0",)))),
    ("all.stats", InstanceReply(instance_id="ABC123", data=STATS)),
    ("all.cache.clear", InstanceReply(instance_id="A", data=Cleared(cleared=3))),
]
DEPENDENCY_ERROR = DependencyError(
    "taskserv kubernetes 1.28.0",
    missing=[MissingDependency(dependency="taskserv:etcd", constraint="^3.5", available=("3.4.0", "3.3.1"))],
    cycle=["taskserv:a", "taskserv:b", "taskserv:a"],
    path=["taskserv:kubernetes", "taskserv:etcd"],
)
ERRORS: list[LoaderError] = [
    InvalidRequest("unknown field 'nmae'", field="nmae"),
    NotFound("taskserv", "kubernetex", ["kubernetes"]),
    VersionNotFound("taskserv", "kubernetes", "^9", ["1.29.2", "1.28.0"]),
    DEPENDENCY_ERROR,
    InvalidExtension("/ext/taskservs/broken/1.0.0", ["mod.nu does not parse"]),
    LoadFailed("nu exited with 1", exit_code=1, stderr="Error: boom"),
    LoadTimeout(30.0),
    Unavailable("too many loads waiting"),
    UntrustedExtension("taskserv", "kubernetes", "1.29.0", "signer is not trusted", signer="U" + "A" * 55),
]


@pytest.mark.parametrize(("suffix", "data"), REPLY_DATA, ids=[f"{s}-{type(d).__name__}" for s, d in REPLY_DATA])
def test_a_success_reply_validates_against_its_subject_s_schema(suffix: str, data: Any) -> None:
    body = json.loads(success(data, Codec.JSON))
    errors = [e.message for e in validator(f"{suffix}.reply.json").iter_errors(body)]
    assert errors == []


@pytest.mark.parametrize(("suffix", "data"), REPLY_DATA, ids=[f"{s}-{type(d).__name__}" for s, d in REPLY_DATA])
def test_a_msgpack_reply_carries_what_the_json_reply_carries(suffix: str, data: Any) -> None:
    """The schemas describe both encodings: read with no types to guide it (msgspec untyped, and the `msgpack`
    package), a MessagePack reply is the JSON reply, type for type (timestamps are RFC 3339 strings)."""
    as_json = json.loads(success(data, Codec.JSON))
    body = success(data, Codec.MSGPACK)
    for decoded in (msgspec.msgpack.decode(body), msgpack.unpackb(body)):
        assert decoded == as_json
        assert [e.message for e in validator(f"{suffix}.reply.json").iter_errors(decoded)] == []


@pytest.mark.parametrize(
    ("suffix", "data"),
    [
        ("load", Status(loaded=True, versions=())),
        ("status", EXTENSION),
        ("list", [AVAILABLE]),
        ("discover", [EXTENSION]),
        ("stats", GraphText(text="x")),
        ("graph", Cleared(cleared=1)),
        ("cache.clear", STATS),
        ("stats", InstanceReply(instance_id="A", data=STATS)),
        ("all.stats", STATS),
        ("all.status", InstanceReply(instance_id="A", data=STATS)),
        ("all.cache.clear", InstanceReply(instance_id="A", data=Status(loaded=False, versions=()))),
        ("all.list", InstanceReply(instance_id="A", data=EXTENSION)),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_reply_with_another_subject_s_data_is_rejected(suffix: str, data: Any) -> None:
    assert not validator(f"{suffix}.reply.json").is_valid(json.loads(success(data, Codec.JSON)))


@pytest.mark.parametrize("subject", FLEET_SUBJECTS)
def test_a_fleet_reply_names_its_instance_and_holds_the_single_subject_s_data(subject: str) -> None:
    suffix = subject.removeprefix("extensions.")
    single = dict(REPLY_DATA)[suffix.removeprefix("all.")]
    check = validator(f"{suffix}.reply.json")
    assert check.is_valid(json.loads(success(InstanceReply(instance_id="A", data=single), Codec.JSON)))
    assert not check.is_valid({"success": True, "data": {"data": wire(single)}})
    assert not check.is_valid({"success": True, "data": {"instance_id": "A"}})


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code)
def test_every_error_reply_validates_against_every_reply_schema(error: LoaderError) -> None:
    body = json.loads(failure(error, Codec.JSON))
    for route in ROUTES:
        assert validator(route.reply_file).is_valid(body), route.reply_file


@pytest.mark.parametrize("file", sorted(f for f in SCHEMAS if f.endswith(".reply.json")))
def test_the_details_of_a_dependency_error_are_described(file: str) -> None:
    """Every reply schema says what a dependency_error's details hold (MissingDependency entries, not prose),
    and leaves the other codes' details as they were."""
    ok = json.loads(failure(DEPENDENCY_ERROR, Codec.JSON))
    assert ok["error"]["details"]["missing"] == [
        {"dependency": "taskserv:etcd", "constraint": "^3.5", "available": ["3.4.0", "3.3.1"]}
    ]
    check = validator(file)
    assert list(check.iter_errors(ok)) == []
    unconstrained = {**ok["error"]["details"]["missing"][0], "constraint": None, "available": []}
    assert check.is_valid({**ok, "error": {**ok["error"], "details": {"missing": [unconstrained], "cycle": []}}})

    def with_details(details: Any, code: str = "dependency_error") -> dict[str, Any]:
        return {"success": False, "error": {"code": code, "message": "m", "details": details}}

    prose = {"missing": ["lib@^2 (available: 1.5.0)"], "cycle": []}
    assert not check.is_valid(with_details(prose))
    assert not check.is_valid(with_details({"missing": [{"dependency": "taskserv:lib"}], "cycle": []}))
    assert not check.is_valid(with_details({"cycle": []}))
    assert check.is_valid(with_details(prose, code="load_failed"))
    defs = SCHEMAS[file]["$defs"]
    assert set(defs["MissingDependency"]["required"]) == {"dependency", "constraint", "available"}
    assert defs["DependencyErrorDetails"]["properties"]["missing"]["items"] == {"$ref": "#/$defs/MissingDependency"}


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code)
def test_an_error_reply_in_msgpack_carries_what_it_carries_in_json(error: LoaderError) -> None:
    body = failure(error, Codec.MSGPACK)
    assert msgspec.msgpack.decode(body) == msgpack.unpackb(body) == json.loads(failure(error, Codec.JSON))


def test_the_error_codes_in_the_schema_are_the_service_s() -> None:
    codes = SCHEMAS["load.reply.json"]["$defs"]["ErrorBody"]["properties"]["code"]["enum"]
    assert set(codes) == set(ERROR_CODES) == {type(e).code for e in ERRORS}


@pytest.mark.parametrize(("file", "event"), [("ExtensionLoaded.json", LOADED), ("ExtensionUnloaded.json", UNLOADED)])
def test_events_validate_against_their_schema_only(file: str, event: msgspec.Struct) -> None:
    assert list(validator(file).iter_errors(wire(event))) == []
    other = "ExtensionUnloaded.json" if file == "ExtensionLoaded.json" else "ExtensionLoaded.json"
    assert not validator(other).is_valid(wire(event))


@pytest.mark.parametrize(("file", "event"), [("ExtensionLoaded.json", LOADED), ("ExtensionUnloaded.json", UNLOADED)])
def test_an_event_in_msgpack_carries_what_it_carries_in_json(file: str, event: msgspec.Struct) -> None:
    """Events go out as JSON; should one go out through the MessagePack codec, it must not change type."""
    body = Codec.MSGPACK.encode(event)
    for decoded in (msgspec.msgpack.decode(body), msgpack.unpackb(body)):
        assert decoded == wire(event)
        assert isinstance(decoded["timestamp"], str)
        assert list(validator(file).iter_errors(decoded)) == []


def test_structs_encode_to_what_their_schema_accepts() -> None:
    requests = [
        LoadRequest(extension_type="taskserv", name="kubernetes", version="^1.28", with_dependencies=True),
        ReloadRequest(extension_type="taskserv", name="kubernetes"),
        ListRequest(),
        StatusRequest(extension_type="cluster", name="buildkit", version="1.0.0"),
        DiscoverRequest(extension_type="provider"),
        GraphRequest(extension_type="cluster", name="buildkit", format="mermaid"),
        EmptyRequest(),
    ]
    for request in requests:
        assert validator(f"{type(request).__name__}.json").is_valid(wire(request)), request


OK = True
BAD = False
LONG = "k" * 64
REQUEST_CASES: list[tuple[type[msgspec.Struct], Any, bool]] = [
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"}, OK),
    (LoadRequest, {"extension_type": "Taskservs", "name": "kubernetes"}, OK),
    (LoadRequest, {"extension_type": "PROVIDER", "name": "aws", "version": None, "with_dependencies": True}, OK),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": ">=1.27,<2"}, OK),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.*"}, OK),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": "latest"}, OK),
    (LoadRequest, {"extension_type": "taskserv", "name": LONG}, OK),
    (LoadRequest, {"extension_type": "taskserv", "name": "0x_a-b.c"}, OK),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "nmae": "x"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "../etc"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "a..b"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "kube/rnetes"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "kube rnetes"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "kube\x00"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "Kubernetes"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "-kubernetes"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": ""}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": LONG + "s"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": 5}, BAD),
    (LoadRequest, {"extension_type": "plugin", "name": "kubernetes"}, BAD),
    (LoadRequest, {"extension_type": "taskservss", "name": "kubernetes"}, BAD),
    (LoadRequest, {"name": "kubernetes"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28; rm -rf /"}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": ""}, BAD),
    (LoadRequest, {"extension_type": "taskserv", "name": "kubernetes", "with_dependencies": "yes"}, BAD),
    (LoadRequest, ["taskserv", "kubernetes"], BAD),
    (ReloadRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": "~1.28.0"}, OK),
    (ReloadRequest, {"extension_type": "taskserv", "name": "kubernetes", "with_dependencies": True}, BAD),
    (ListRequest, {}, OK),
    (ListRequest, {"extension_type": "cluster"}, OK),
    (ListRequest, {"extension_type": None}, OK),
    (ListRequest, {"name": "kubernetes"}, BAD),
    (ListRequest, {"extension_type": 1}, BAD),
    (StatusRequest, {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"}, OK),
    (StatusRequest, {"name": "kubernetes"}, BAD),
    (DiscoverRequest, {}, OK),
    (DiscoverRequest, {"extension_type": "taskserv", "name": "kubernetes"}, OK),
    (DiscoverRequest, {"extension_type": "taskserv", "name": "../etc"}, BAD),
    (GraphRequest, {"extension_type": "cluster", "name": "buildkit", "version": None, "format": "dot"}, OK),
    (GraphRequest, {"extension_type": "cluster", "name": "buildkit", "format": "svg"}, BAD),
    (EmptyRequest, {}, OK),
    (EmptyRequest, {"force": True}, BAD),
    (EmptyRequest, [], BAD),
    (EmptyRequest, "", BAD),
]


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    REQUEST_CASES,
    ids=[f"{kind.__name__}-{'ok' if ok else 'bad'}-{i}" for i, (kind, _, ok) in enumerate(REQUEST_CASES)],
)
def test_request_schemas_accept_and_reject_what_msgspec_does(
    kind: type[msgspec.Struct], body: Any, expected: bool
) -> None:
    try:
        msgspec.json.decode(json.dumps(body).encode(), type=kind)
    except msgspec.ValidationError:
        decoded = False
    else:
        decoded = True
    assert decoded is expected, f"msgspec {'rejected' if expected else 'accepted'} {body!r}"
    assert validator(f"{kind.__name__}.json").is_valid(body) is expected, f"schema disagrees on {body!r}"


@pytest.mark.parametrize("field", ["name", "version"])
def test_a_trailing_newline_is_rejected(field: str) -> None:
    # Python's `$` matches before a final newline; ECMA-262 (the schemas' regex flavour) and Rust do not. The
    # decoder must agree with them. (Python's jsonschema uses `re`, so it cannot show the schema side here.)
    body = {"extension_type": "taskserv", "name": "kubernetes", field: "1.28.0\n" if field == "version" else "k\n"}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(body).encode(), type=LoadRequest)
