"""Bad input on every request subject, against the real service on a real nats-server.

For each request subject a battery of bodies that are wrong for it (not JSON, the wrong shape, unknown
fields, bad names, types and versions, a deep nesting, a 900 KB body, MessagePack garbage) must each be
answered with an `invalid_request` envelope, in the request's encoding, with the NATS service error
headers, naming the field where the contract says so, and never with a traceback. Afterwards the service
still loads, and `$SRV.STATS` has counted every one of them as an error of that endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import anyio
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout

from service.contract.subjects import ROUTES
from service.wire.service import ExtensionService
from tests.conftest import WAIT

pytestmark = pytest.mark.anyio

PREFIX = "extensions"
JSON_CT = "application/json"
MSGPACK_CT = "application/msgpack"
REQUEST_TIMEOUT = 10.0
VALID_LOAD = {"extension_type": "taskserv", "name": "kubernetes", "version": "1.28.0"}


# --- the contract's error envelope, decoded strictly ------------------------------------------------------


class ErrorObject(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    success: Literal[False]
    error: ErrorObject


class Envelope(msgspec.Struct, forbid_unknown_fields=True):
    success: bool
    data: Any = None
    error: ErrorObject | None = None


def decode_envelope(data: bytes, *, msgpack: bool = False) -> Envelope:
    if msgpack:
        return msgspec.msgpack.decode(data, type=Envelope)
    return msgspec.json.decode(data, type=Envelope)


class EndpointStats(msgspec.Struct):
    name: str
    num_requests: int
    num_errors: int


class ServiceStats(msgspec.Struct):
    endpoints: list[EndpointStats]


# --- the subjects and what is valid on each ---------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    suffix: str  # after the prefix: extensions.<suffix>
    endpoint: str  # its name in $SRV.STATS
    fields: tuple[str, ...]  # the fields its request accepts
    base: dict[str, Any]  # a valid body
    required: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        return f"{PREFIX}.{self.suffix}"


KUBERNETES = {"extension_type": "taskserv", "name": "kubernetes"}
NAMED = ("extension_type", "name", "version")

SUBJECTS = [
    Subject("load", "load", (*NAMED, "with_dependencies"), KUBERNETES, ("extension_type", "name")),
    Subject("reload", "reload", NAMED, KUBERNETES, ("extension_type", "name")),
    Subject("list", "list", ("extension_type",), {"extension_type": "taskserv"}),
    Subject("status", "status", NAMED, KUBERNETES, ("extension_type", "name")),
    Subject("discover", "discover", ("extension_type", "name"), KUBERNETES),
    Subject("cache.clear", "cache_clear", (), {}),
    Subject("stats", "stats", (), {}),
    Subject("graph", "graph", (*NAMED, "format"), KUBERNETES, ("extension_type", "name")),
    # the fleet subjects, which every instance answers, decode as their single-instance twins do
    Subject("all.list", "all_list", ("extension_type",), {"extension_type": "taskserv"}),
    Subject("all.status", "all_status", NAMED, KUBERNETES, ("extension_type", "name")),
    Subject("all.cache.clear", "all_cache_clear", (), {}),
    Subject("all.stats", "all_stats", (), {}),
]

BAD_NAMES = [
    "../etc",
    "a/b",
    "a..b",
    " x",
    "x ",
    "X",
    "Kubernetes",
    "a" * 65,
    "",
    "\u0000",
    "kube\u0000rnetes",
    "kube\nrnetes",
    "\nkubernetes",
    "kube rnetes",
    "-kubernetes",
    ".kubernetes",
    "_kubernetes",
    "kubernetes/..",
    "k\u00fcbernetes",
    "kubernetes\t",
]
BAD_TYPES = ["plugin", "", "taskserv ", "taskservss", "task serv", "providerz"]
BAD_VERSIONS = ["not a version!", "1.2.3.4.5", "1" * 200, "", "1.28.0/../..", "1.28.0\u0000"]

NESTING = 10_000
BIG = 900 * 1024


@dataclass(frozen=True)
class Case:
    label: str
    body: bytes
    field: str | None = None  # the details.field the contract asks for; None: not checked
    msgpack: bool = False


def js(value: Any) -> bytes:
    return msgspec.json.encode(value)


def mp(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def cases_for(subject: Subject) -> list[Case]:
    """Every body that is wrong for this subject, with the field its error must name."""

    def body(**changes: Any) -> dict[str, Any]:
        return {**subject.base, **changes}

    def first_unknown(keys: list[str]) -> str:
        return next(k for k in keys if k not in subject.fields)

    typo = {"extension_type": "taskserv", "name": "kubernetes", "nmae": "x"}
    nested = b"[" * NESTING + b"]" * NESTING
    # a 900 KB body: one huge value, in the first field this subject has (or an unknown one)
    big_field = "name" if "name" in subject.fields else subject.fields[0] if subject.fields else "padding"
    cases = [
        Case("not JSON: garbage", b"garbage"),
        Case("not JSON: {", b"{"),
        Case("not JSON: \\xff\\xfe", b"\xff\xfe"),
        Case("not JSON: trailing garbage", js(subject.base) + b"x"),
        Case("wrong shape: []", b"[]"),
        Case("wrong shape: 1", b"1"),
        Case('wrong shape: "x"', b'"x"'),
        Case("wrong shape: null", b"null"),
        Case("wrong shape: true", b"true"),
        Case("extension_type is a number", js({"extension_type": 5}), "extension_type"),
        Case("unknown field nmae", js(body(nmae="x")), "nmae"),
        Case("unknown field in the example typo", js(typo), first_unknown(list(typo))),
        Case(f"{NESTING:,} levels of [", nested),
        Case(f"{NESTING:,} levels of [ in a field", b'{"extension_type":' + nested + b"}", "extension_type"),
        Case("900 KB body", js(body(**{big_field: "a" * BIG})), big_field),
        Case("msgpack: the never-used byte 0xc1", b"\xc1", msgpack=True),
        Case("msgpack: garbage", b"garbage", msgpack=True),
        Case("msgpack: a truncated map", b"\x82\xa4name", msgpack=True),
        Case("msgpack: a JSON body", js(body(nmae="x")), msgpack=True),
        Case("msgpack: an array", mp([1, 2, 3]), msgpack=True),
        Case("msgpack: an int", mp(1), msgpack=True),
        Case("msgpack: nil", mp(None), msgpack=True),
        Case("msgpack: a map with an int key", mp({1: 2}), msgpack=True),
        Case(f"msgpack: {NESTING:,} levels of array", b"\x91" * NESTING + b"\xc0", msgpack=True),
        Case("msgpack: extension_type is a number", mp({"extension_type": 5}), "extension_type", msgpack=True),
        Case("msgpack: unknown field", mp(body(nmae="x")), "nmae", msgpack=True),
    ]
    if not subject.fields:
        cases.append(Case("a field where none is accepted", js({"extension_type": "taskserv"}), "extension_type"))
    if "extension_type" in subject.fields:
        cases += [Case(f"bad type {t!r}", js(body(extension_type=t)), "extension_type") for t in BAD_TYPES]
        cases.append(Case("extension_type is a list", js(body(extension_type=["taskserv"])), "extension_type"))
        cases.append(Case("msgpack: bad type", mp(body(extension_type="plugin")), "extension_type", msgpack=True))
    if "name" in subject.fields:
        cases += [Case(f"bad name {n!r}", js(body(name=n)), "name") for n in BAD_NAMES]
        cases.append(Case("name is a number", js(body(name=5)), "name"))
        cases.append(Case("name is an object", js(body(name={"name": "kubernetes"})), "name"))
        cases.append(Case("msgpack: bad name", mp(body(name="../etc")), "name", msgpack=True))
        cases.append(Case("msgpack: name is bytes", mp(body(name=b"kubernetes")), "name", msgpack=True))
    if "version" in subject.fields:
        cases += [Case(f"bad version {v[:20]!r}", js(body(version=v)), "version") for v in BAD_VERSIONS]
        cases.append(Case("version is a number", js(body(version=1.28)), "version"))
        cases.append(Case("msgpack: bad version", mp(body(version="1.2.3.4.5")), "version", msgpack=True))
    if "name" in subject.required:
        cases += [
            Case("empty body", b""),
            Case("white space body", b" \n"),
            Case("empty object", b"{}", "extension_type"),
            Case("name missing", js({"extension_type": "taskserv"}), "name"),
            Case("extension_type missing", js({"name": "kubernetes"}), "extension_type"),
            Case("msgpack: empty body", b"", msgpack=True),
            Case("msgpack: empty map", mp({}), "extension_type", msgpack=True),
        ]
    if "format" in subject.fields:
        cases.append(Case("bad format", js(body(format="svg")), "format"))
    if "with_dependencies" in subject.fields:
        cases.append(Case("with_dependencies is a string", js(body(with_dependencies="yes")), "with_dependencies"))
    return cases


# --- helpers ----------------------------------------------------------------------------------------------


async def request(nc: Client, subject: str, body: bytes, headers: dict[str, str] | None = None) -> Msg:
    return await nc.request(subject, body, timeout=REQUEST_TIMEOUT, headers=headers)


def error_problems(label: str, reply: Msg, *, msgpack: bool, field: str | None) -> list[str]:
    """What is wrong with `reply` as the answer to a bad request; empty when it is right."""
    problems: list[str] = []
    headers = reply.headers or {}
    want = MSGPACK_CT if msgpack else JSON_CT
    if headers.get("Content-Type") != want:
        problems.append(f"Content-Type {headers.get('Content-Type')!r}, expected {want!r}")
    service_error = headers.get("Nats-Service-Error", "")
    if not service_error.strip() or not service_error.isprintable():
        problems.append(f"Nats-Service-Error {service_error[:200]!r} is not one non-empty line of printable text")
    if headers.get("Nats-Service-Error-Code") != "400":
        problems.append(f"Nats-Service-Error-Code {headers.get('Nats-Service-Error-Code')!r}, expected '400'")
    if b"Traceback" in reply.data or b'File "' in reply.data:
        problems.append("the reply contains a traceback")
    try:
        envelope = (
            msgspec.msgpack.decode(reply.data, type=ErrorEnvelope)
            if msgpack
            else msgspec.json.decode(reply.data, type=ErrorEnvelope)
        )
    except msgspec.MsgspecError as exc:
        problems.append(f"the reply is not an error envelope ({exc}): {reply.data[:300]!r}")
        return [f"{label}: {p}" for p in problems]
    error = envelope.error
    if error.code != "invalid_request":
        problems.append(f"code {error.code!r} ({error.message[:200]}), expected 'invalid_request'")
        return [f"{label}: {p}" for p in problems]
    if not error.message.strip():
        problems.append("the message is empty")
    reason = error.details.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        problems.append(f"details.reason {reason!r} is not a text")
    if field is not None and error.details.get("field") != field:
        problems.append(f"details.field {str(error.details.get('field'))[:80]!r}, expected {field[:80]!r}")
    return [f"{label}: {p}" for p in problems]


async def service_stats(nc: Client) -> dict[str, EndpointStats]:
    reply = await request(nc, "$SRV.STATS.extension-loader", b"")
    stats = msgspec.json.decode(reply.data, type=ServiceStats)
    return {e.name: e for e in stats.endpoints}


async def wait_for_stats(nc: Client, endpoint: str, requests: int) -> dict[str, EndpointStats]:
    """$SRV.STATS once `endpoint` has counted `requests` requests (each look is a round trip, no sleep)."""
    with anyio.fail_after(WAIT):
        while True:
            stats = await service_stats(nc)
            if stats[endpoint].num_requests >= requests:
                return stats


async def assert_valid_load_works(nc: Client) -> None:
    reply = await request(nc, f"{PREFIX}.load", js(VALID_LOAD))
    envelope = decode_envelope(reply.data)
    assert envelope.success, envelope.error
    assert envelope.data["metadata"]["name"] == "kubernetes"
    assert envelope.data["metadata"]["version"] == "1.28.0"


# --- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", SUBJECTS, ids=[s.suffix for s in SUBJECTS])
async def test_bad_bodies_are_invalid_requests(subject: Subject, service: ExtensionService, nc: Client) -> None:
    cases = cases_for(subject)
    problems: list[str] = []
    with anyio.fail_after(WAIT * 3):
        for case in cases:
            headers = {"Content-Type": MSGPACK_CT} if case.msgpack else None
            reply = await request(nc, subject.subject, case.body, headers)
            problems += error_problems(case.label, reply, msgpack=case.msgpack, field=case.field)
        assert not problems, f"{len(problems)} problems on {subject.subject}:\n" + "\n".join(problems)

        # nothing of that stopped the service
        await assert_valid_load_works(nc)

        # and $SRV.STATS counted each bad request as an error of this endpoint, and of no other
        stats = await service_stats(nc)
    assert stats[subject.endpoint].num_errors == len(cases)
    assert stats[subject.endpoint].num_requests == len(cases) + (subject.endpoint == "load")
    assert stats["load"].num_requests >= 1
    others = {name: s.num_errors for name, s in stats.items() if name != subject.endpoint}
    assert others == dict.fromkeys(others, 0)


NAMED_SUBJECTS = [s for s in SUBJECTS if "name" in s.fields]


@pytest.mark.parametrize("subject", NAMED_SUBJECTS, ids=[s.suffix for s in NAMED_SUBJECTS])
async def test_a_name_with_a_trailing_newline_is_invalid(
    subject: Subject, service: ExtensionService, nc: Client
) -> None:
    """CONTRACT.md: a control character in a name is invalid_request before anything touches the disk."""
    problems: list[str] = []
    with anyio.fail_after(WAIT):
        for name in ("kubernetes\n", "etcd\n"):
            body = js({**subject.base, "name": name})
            reply = await request(nc, subject.subject, body)
            problems += error_problems(f"name {name!r}", reply, msgpack=False, field="name")
            reply = await request(nc, subject.subject, mp({**subject.base, "name": name}), {"Content-Type": MSGPACK_CT})
            problems += error_problems(f"msgpack: name {name!r}", reply, msgpack=True, field="name")
    assert not problems, f"{len(problems)} problems on {subject.subject}:\n" + "\n".join(problems)


@dataclass(frozen=True)
class Hostile:
    label: str
    suffix: str
    body: dict[str, Any]
    field: str | None


HUGE = "k" * BIG
HOSTILE = [
    Hostile("backtick in an unknown field", "load", {**KUBERNETES, "x`y": 1}, "x`y"),
    Hostile("non-ASCII unknown field", "load", {**KUBERNETES, "n\u00e4me": 1}, "n\u00e4me"),
    Hostile("NUL in an unknown field", "load", {**KUBERNETES, "a\u0000b": 1}, "a\u0000b"),
    Hostile("DEL and ESC in an unknown field", "status", {**KUBERNETES, "a\u007f\u001b[2J": 1}, "a\u007f\u001b[2J"),
    Hostile(
        "header injection in an unknown field",
        "load",
        {**KUBERNETES, "a\r\nNats-Service-Error-Code: 200": 1},
        "a\r\nNats-Service-Error-Code: 200",
    ),
    Hostile("line separators in an unknown field", "list", {"\u2028x\u0085y": 1}, "\u2028x\u0085y"),
    Hostile("900 KB unknown field name", "load", {**KUBERNETES, HUGE: 1}, None),
    Hostile("900 KB unknown field name on stats", "stats", {HUGE: 1}, None),
    Hostile("900 KB format", "graph", {**KUBERNETES, "format": HUGE}, "format"),
]
HOSTILE_TIMEOUT = 2.0  # an invalid request is answered in milliseconds


@pytest.mark.parametrize("case", HOSTILE, ids=[h.label for h in HOSTILE])
async def test_hostile_text_in_a_request_is_answered_safely(
    case: Hostile, service: ExtensionService, nc: Client
) -> None:
    """What the requester wrote is echoed only in bounded, printable form, and always gets an answer."""
    with anyio.fail_after(WAIT):
        problems: list[str] = []
        for msgpack in (False, True):
            body = mp(case.body) if msgpack else js(case.body)
            headers = {"Content-Type": MSGPACK_CT} if msgpack else None
            label = f"{'msgpack' if msgpack else 'JSON'}: {case.label}"
            try:
                reply = await nc.request(f"{PREFIX}.{case.suffix}", body, timeout=HOSTILE_TIMEOUT, headers=headers)
            except NatsTimeout:
                problems.append(f"{label}: no reply within {HOSTILE_TIMEOUT} s")
                continue
            problems += error_problems(label, reply, msgpack=msgpack, field=case.field)
        # the service still answers
        reply = await request(nc, f"{PREFIX}.list", b"")
        assert decode_envelope(reply.data).success
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def invalid_utf8_cases(subject: Subject) -> list[Case]:
    """Bodies that are well-formed JSON or MessagePack but for a string that is not UTF-8."""
    cases = [
        Case("JSON: invalid UTF-8 in a key", b'{"\xff": 1}'),
        Case("JSON: invalid UTF-8 in an unknown field", b'{"nm\xc3\x28e": "x"}'),
        Case("msgpack: invalid UTF-8 in a key", b"\x81\xa1\xff\x01", msgpack=True),
    ]
    if "extension_type" in subject.fields:
        cases += [
            Case("JSON: invalid UTF-8 in extension_type", b'{"extension_type": "task\xffserv"}'),
            Case("msgpack: invalid UTF-8 in extension_type", b"\x81\xaeextension_type\xa1\xff", msgpack=True),
        ]
    if "name" in subject.fields:
        cases.append(Case("JSON: invalid UTF-8 in name", b'{"extension_type": "taskserv", "name": "kube\xe2\x82"}'))
    return cases


@pytest.mark.parametrize("subject", SUBJECTS, ids=[s.suffix for s in SUBJECTS])
async def test_invalid_utf8_in_a_string_is_an_invalid_request(
    subject: Subject, service: ExtensionService, nc: Client
) -> None:
    """CONTRACT.md: an undecodable body is invalid_request (400), not an internal error."""
    problems: list[str] = []
    with anyio.fail_after(WAIT):
        for case in invalid_utf8_cases(subject):
            headers = {"Content-Type": MSGPACK_CT} if case.msgpack else None
            reply = await request(nc, subject.subject, case.body, headers)
            problems += error_problems(case.label, reply, msgpack=case.msgpack, field=case.field)
        reply = await request(nc, f"{PREFIX}.list", b"")
        assert decode_envelope(reply.data).success
    assert not problems, f"{len(problems)} problems on {subject.subject}:\n" + "\n".join(problems)


async def test_requests_without_a_reply_subject_do_no_harm(service: ExtensionService, nc: Client) -> None:
    published: dict[str, int] = {}
    errors: dict[str, int] = {}
    for subject in SUBJECTS:
        bad = [b"garbage", b"[]", js({"nmae": "x"}), b"[" * NESTING + b"]" * NESTING]
        for body in bad:
            await nc.publish(subject.subject, body)
        await nc.publish(subject.subject, b"\xc1", headers={"Content-Type": MSGPACK_CT})
        published[subject.endpoint] = len(bad) + 1
        errors[subject.endpoint] = len(bad) + 1
    # valid requests that nobody waits for an answer to
    for suffix in ("list", "discover", "stats"):
        await nc.publish(f"{PREFIX}.{suffix}", b"{}")
        published[suffix] += 1
    await nc.flush()

    with anyio.fail_after(WAIT):
        for subject in SUBJECTS:
            stats = await wait_for_stats(nc, subject.endpoint, published[subject.endpoint])
            assert stats[subject.endpoint].num_requests == published[subject.endpoint]
            assert stats[subject.endpoint].num_errors == errors[subject.endpoint]
        # every subject still answers
        for subject in SUBJECTS:
            if subject.suffix in ("load", "reload"):
                continue  # a real load is checked below, once
            reply = await request(nc, subject.subject, js(subject.base))
            envelope = decode_envelope(reply.data)
            assert envelope.success, (subject.subject, envelope.error)
        await assert_valid_load_works(nc)


@pytest.mark.parametrize(
    ("headers", "reply_type"),
    [
        ({"Content-Type": "text/plain"}, JSON_CT),
        ({"Content-Type": "application/json; charset=utf-8"}, JSON_CT),
        ({"Content-Type": ""}, JSON_CT),
        ({"traceparent": "garbage"}, JSON_CT),
        ({"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "tracestate": "=,=;;"}, JSON_CT),
        ({"traceparent": "garbage", "tracestate": "garbage", "Content-Type": "text/plain"}, JSON_CT),
        ({"X-Unknown": "\u00e9t\u00e9", "Nats-Msg-Id": "x"}, JSON_CT),
        ({"content-type": "APPLICATION/MSGPACK"}, MSGPACK_CT),
    ],
    ids=[
        "text/plain",
        "json-charset",
        "empty-content-type",
        "traceparent-garbage",
        "traceparent-zero-ids",
        "all-odd",
        "unknown-headers",
        "msgpack-any-case",
    ],
)
async def test_odd_headers_are_handled(
    headers: dict[str, str], reply_type: str, service: ExtensionService, nc: Client
) -> None:
    msgpack = reply_type == MSGPACK_CT

    def encode(value: Any) -> bytes:
        return mp(value) if msgpack else js(value)

    with anyio.fail_after(WAIT):
        # a valid request is answered
        reply = await request(nc, f"{PREFIX}.load", encode(VALID_LOAD), headers)
        assert (reply.headers or {}).get("Content-Type") == reply_type
        envelope = decode_envelope(reply.data, msgpack=msgpack)
        assert envelope.success, envelope.error
        assert envelope.data["metadata"]["version"] == "1.28.0"

        # a bad one is an invalid_request like any other
        reply = await request(nc, f"{PREFIX}.status", encode({"extension_type": "taskserv", "name": "a/b"}), headers)
        problems = error_problems("bad name", reply, msgpack=msgpack, field="name")
        assert not problems, problems

        # and the service goes on answering
        reply = await request(nc, f"{PREFIX}.list", b"")
        assert decode_envelope(reply.data).success


def test_every_request_subject_is_covered() -> None:
    single = ["load", "reload", "list", "status", "discover", "cache.clear", "stats", "graph"]
    fleet = ["all.list", "all.status", "all.cache.clear", "all.stats"]
    assert sorted(single + fleet) == sorted(route.suffix for route in ROUTES if route.suffix in single + fleet)
    # every subject the service serves, the contract's above and any added since (contract/subjects.py)
    assert sorted(s.suffix for s in SUBJECTS) == sorted(route.suffix for route in ROUTES)
    assert {s.suffix: s.endpoint for s in SUBJECTS} == {route.suffix: route.endpoint for route in ROUTES}
    assert all(len(cases_for(s)) >= 25 for s in SUBJECTS)
