"""The subjects table (service/contract/subjects.py) against what must agree with it and is written by hand:
CONTRACT.md's subjects and their `$SRV` endpoint names, nats.conf's permission lists and accounts, and README.md's
table of subjects. Both files are parsed as text; a failure names the file, the list or account, and what is
missing or extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.contract.config import load_config
from service.contract.messages import (
    DiscoverRequest,
    EmptyRequest,
    ExtensionLoaded,
    ExtensionUnloaded,
    GraphRequest,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)
from service.contract.subjects import EVENTS, LOADER, REQUESTS, ROUTES, request_subject
from service.core.manager import ExtensionManager
from service.wire.handlers import RequestHandlers

ROOT = Path(__file__).resolve().parents[2]
NATS = load_config(environ={}).nats
PREFIX, GROUP = NATS.subject_prefix, NATS.queue_group  # nats.conf is written for the defaults


# --- the table holds the contract's subjects, as they are on the wire -------------------------------------

# CONTRACT.md: suffix, request struct, `$SRV` endpoint name, and the fleet twin's name where there is one. New
# subjects may come (additions are additive); these stay as they are.
CONTRACT: list[tuple[str, type[Any], str, str | None]] = [
    ("load", LoadRequest, "load", None),
    ("reload", ReloadRequest, "reload", None),
    ("list", ListRequest, "list", "all_list"),
    ("status", StatusRequest, "status", "all_status"),
    ("discover", DiscoverRequest, "discover", None),
    ("cache.clear", EmptyRequest, "cache_clear", "all_cache_clear"),
    ("stats", EmptyRequest, "stats", "all_stats"),
    ("graph", GraphRequest, "graph", None),
]


@pytest.mark.parametrize(("suffix", "request_type", "endpoint", "twin"), CONTRACT, ids=[c[0] for c in CONTRACT])
def test_the_table_holds_the_contract_s_subjects(
    suffix: str, request_type: type[Any], endpoint: str, twin: str | None
) -> None:
    routes = {route.suffix: route for route in ROUTES}
    single = routes[suffix]
    assert (single.request, single.endpoint, single.queue) == (request_type, endpoint, True)
    assert request_subject(suffix).fleet is (twin is not None)
    if twin is not None:
        fleet = routes[f"all.{suffix}"]
        assert (fleet.request, fleet.endpoint, fleet.queue) == (request_type, twin, False)
    else:
        assert f"all.{suffix}" not in routes


def test_the_table_holds_the_contract_s_events() -> None:
    assert [(event.suffix, event.event) for event in EVENTS] == [
        ("loaded", ExtensionLoaded),
        ("unloaded", ExtensionUnloaded),
    ]


def test_every_subject_is_one_of_its_own() -> None:
    suffixes = [route.suffix for route in ROUTES] + [event.suffix for event in EVENTS]
    endpoints = [route.endpoint for route in ROUTES]
    assert len(set(suffixes)) == len(suffixes) and len(set(endpoints)) == len(endpoints)
    token = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")
    assert all(token.fullmatch(suffix) for suffix in suffixes), suffixes
    for subject in REQUESTS:
        assert subject.request.__struct_config__.forbid_unknown_fields, f"{subject.suffix}: unknown fields must fail"
        assert subject.data and subject.summary.endswith(".")
        assert LOADER not in subject.callers, "the service answers requests; it does not send them"


def test_every_subject_has_a_handler() -> None:
    manager = cast(ExtensionManager, SimpleNamespace(instance_id="SUBJECTS-TEST"))
    routes = RequestHandlers(manager, lambda: cast(Any, None)).routes()
    assert [route for route, _ in routes] == list(ROUTES)


# --- nats.conf ---------------------------------------------------------------------------------------------


@dataclass
class Permissions:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)


def parse_nats_conf(text: str) -> dict[str, Permissions]:
    """User name -> its publish and subscribe allow lists, as nats.conf writes them (an entry with a queue group is
    `"<subject> <group>"`)."""
    text = "\n".join(_uncommented(line) for line in text.splitlines())
    blocks = {name: _block(text, match.end() - 1) for name, match in _starts(r"\b([A-Z_]+)\s*=\s*\{", text)}
    users = re.findall(r"\{\s*user:\s*([\w-]+)\s*,[^}]*?permissions:\s*\$([A-Z_]+)", text)
    out: dict[str, Permissions] = {}
    for user, variable in users:
        block = blocks[variable]
        out[user] = Permissions(_allowed(block, "publish"), _allowed(block, "subscribe"))
    return out


def _uncommented(line: str) -> str:
    quoted = False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i]
    return line


def _starts(pattern: str, text: str) -> list[tuple[str, re.Match[str]]]:
    return [(match.group(1), match) for match in re.finditer(pattern, text)]


def _block(text: str, opening: int) -> str:
    """The text between the brace at `opening` and the brace that closes it."""
    depth = 0
    for i in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[opening + 1 : i]
    raise AssertionError(f"nats.conf: the brace at offset {opening} is never closed")


def _allowed(block: str, direction: str) -> list[str]:
    found = re.search(rf"\b{direction}\s*:\s*\{{", block)
    if found is None:
        return []
    inner = _block(block, found.end() - 1)
    allow = re.search(r"\ballow\s*:\s*\[([^\]]*)\]", inner)
    if allow is None:
        return []
    return [quoted or bare for quoted, bare in re.findall(r'"([^"]*)"|([^\s,"]+)', allow.group(1))]


def expected_permissions(user: str) -> Permissions:
    """What the subjects table says `user` may do on the service's own subjects (`<prefix>.*`)."""
    events = [f"{PREFIX}.{event.suffix}" for event in EVENTS]
    if user == LOADER:
        serves = [f"{PREFIX}.{route.suffix}" + (f" {GROUP}" if route.queue else "") for route in ROUTES]
        return Permissions(publish=events, subscribe=serves + events)
    return Permissions(
        publish=[f"{PREFIX}.{route.suffix}" for route in ROUTES if user in route.subject.callers],
        subscribe=[f"{PREFIX}.{event.suffix}" for event in EVENTS if user in event.readers],
    )


@dataclass
class Account:
    users: list[str] = field(default_factory=list)
    stream_imports: list[tuple[str, str]] = field(default_factory=list)  # (exporting account, subject)
    stream_exports: dict[str, list[str]] = field(default_factory=dict)  # subject -> the accounts it goes to


GLOBAL = "$G"  # the account of the users of a file without `accounts`


def parse_accounts(text: str) -> dict[str, Account]:
    """Account name -> its users, and the streams it imports and exports, as nats.conf's `accounts` block writes
    them; a file without one has every user in the global account."""
    text = "\n".join(_uncommented(line) for line in text.splitlines())
    found = re.search(r"\baccounts\s*\{", text)
    if found is None:
        return {GLOBAL: Account(users=re.findall(r"\{\s*user:\s*([\w-]+)", text))}
    inner = _block(text, found.end() - 1)
    accounts: dict[str, Account] = {}
    end = 0
    for match in re.finditer(r"\b([A-Z][A-Z0-9_]*)\s*:?\s*\{", inner):
        if match.start() < end:
            continue  # inside the account before
        block = _block(inner, match.end() - 1)
        end = match.end() + len(block)
        account = Account(users=re.findall(r"\buser:\s*([\w-]+)", block))
        subject = r'"?([^\s",}]+)"?'
        account.stream_imports = re.findall(
            rf"\{{\s*stream:\s*\{{\s*account:\s*(\w+)\s*,\s*subject:\s*{subject}\s*\}}", block
        )
        for exported, to in re.findall(rf"\{{\s*stream:\s*{subject}\s*,\s*accounts:\s*\[([^\]]*)\]", block):
            account.stream_exports[exported] = re.findall(r"\w+", to)
        accounts[match.group(1)] = account
    return accounts


def account_problems(text: str) -> list[str]:
    """Each way nats.conf's accounts keep apart what the subjects table joins: whoever sends a request subject must
    be in the loader's account (the service serves it there), and whoever reads an event in another account
    must have it exported to that account as a stream and imported there."""
    accounts = parse_accounts(text)
    account_of = {user: name for name, account in accounts.items() for user in account.users}
    home = account_of.get(LOADER)
    if home is None:
        return [f"nats.conf has no user {LOADER!r} in any account"]
    problems = []
    for user in sorted({user for subject in REQUESTS for user in subject.callers}):
        if account_of.get(user, home) != home:
            problems.append(
                f"nats.conf, user {user} (account {account_of[user]}) sends requests that {LOADER} serves in "
                f"account {home}: the service never hears them"
            )
    for event in EVENTS:
        subject = f"{PREFIX}.{event.suffix}"
        for user in event.readers:
            there = account_of.get(user, home)
            if there == home:
                continue
            exported = there in accounts[home].stream_exports.get(subject, [])
            imported = (home, subject) in accounts[there].stream_imports
            if not (exported and imported):
                problems.append(
                    f"nats.conf, user {user} (account {there}) reads {subject}, which {LOADER} publishes in account "
                    f"{home}: {home} must export it to {there} as a stream ({'yes' if exported else 'no'}) and {there} "
                    f"import it ({'yes' if imported else 'no'})"
                )
    return problems


def nats_conf_problems(text: str) -> list[str]:
    """Each way nats.conf's lists and accounts differ from the subjects table, as a sentence; [] when they agree."""
    users = parse_nats_conf(text)
    problems = []
    named = {user for subject in REQUESTS for user in subject.callers}
    named |= {user for event in EVENTS for user in event.readers} | {LOADER}
    problems += [
        f"nats.conf has no user {user!r}, whom the subjects table names" for user in sorted(named - set(users))
    ]
    for user, permissions in users.items():
        expected = expected_permissions(user)
        for direction in ("publish", "subscribe"):
            listed = [s for s in getattr(permissions, direction) if s.split(" ")[0].startswith(f"{PREFIX}.")]
            wanted = getattr(expected, direction)
            missing = [s for s in wanted if s not in listed]
            extra = [s for s in listed if s not in wanted]
            if missing or extra:
                problems.append(
                    f"nats.conf, user {user}, {direction} allow: missing {missing}, not in the subjects table {extra}"
                )
    return problems + account_problems(text)


def test_nats_conf_allows_what_the_table_says() -> None:
    assert nats_conf_problems((ROOT / "nats.conf").read_text()) == []


def test_the_nats_conf_check_names_what_is_missing_or_extra() -> None:
    text = (ROOT / "nats.conf").read_text()
    assert parse_nats_conf(text)["loader"].subscribe[0] == f"{PREFIX}.load {GROUP}"
    dropped = text.replace(f"{PREFIX}.graph, ", "", 1).replace(f'"{PREFIX}.stats {GROUP}", ', "", 1)
    added = dropped.replace('"_INBOX.observer.>"', f'"_INBOX.observer.>", {PREFIX}.load', 1)
    assert nats_conf_problems(added) == [
        f"nats.conf, user orchestrator, publish allow: missing ['{PREFIX}.graph'], not in the subjects table []",
        f"nats.conf, user loader, subscribe allow: missing ['{PREFIX}.stats {GROUP}'], not in the subjects table []",
        f"nats.conf, user observer, subscribe allow: missing [], not in the subjects table ['{PREFIX}.load']",
    ]


def test_the_nats_conf_check_names_an_account_that_keeps_a_reader_or_a_caller_apart() -> None:
    text = (ROOT / "nats.conf").read_text()
    accounts = parse_accounts(text)
    assert accounts["LIVE"].users == ["orchestrator", LOADER]
    assert ("LIVE", f"{PREFIX}.unloaded") in accounts["OBS"].stream_imports
    assert accounts["LIVE"].stream_exports[f"{PREFIX}.loaded"] == ["EVENTS", "OBS"]
    unheard = text.replace(f"{{stream: {{account: LIVE, subject: {PREFIX}.unloaded}}}}", "", 1)
    assert nats_conf_problems(unheard) == [
        f"nats.conf, user observer (account OBS) reads {PREFIX}.unloaded, which loader publishes in account LIVE: "
        "LIVE must export it to OBS as a stream (yes) and OBS import it (no)"
    ]
    moved = text.replace("{user: orchestrator,", "{user: elsewhere,", 1).replace(
        "{user: observer,",
        "{user: observer, password: $NATS_OBSERVER_PASSWORD, permissions: $OBSERVER}\n"
        "      {user: orchestrator, password: $NATS_ORCHESTRATOR_PASSWORD, permissions: $ORCHESTRATOR}\n"
        "      {user: unused,",
        1,
    )
    assert parse_accounts(moved)["OBS"].users == ["observer", "orchestrator", "unused"]
    assert account_problems(moved) == [
        "nats.conf, user orchestrator (account OBS) sends requests that loader serves in account LIVE: the service "
        "never hears them"
    ]
    single = "authorization {\n  users = [\n    {user: loader, password: x, permissions: $LOADER}\n  ]\n}\n"
    assert parse_accounts(single) == {GLOBAL: Account(users=[LOADER])}
    assert account_problems(single) == []


# --- README.md ---------------------------------------------------------------------------------------------


def readme_subjects(text: str) -> tuple[list[str], list[str]]:
    """The request subjects and the event subjects in the table under README.md's "### Subjects". A row may
    name several subjects; one written from its second token on (`.all.status`) has the prefix in front."""
    lines = text.splitlines()
    start = lines.index("### Subjects")
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    requests: list[str] = []
    events: list[str] = []
    for cells in rows[2:]:  # the header and the line under it
        names = [f"{PREFIX}{name}" if name.startswith(".") else name for name in re.findall(r"`([^`]+)`", cells[0])]
        (events if cells[1] == "event" else requests).extend(names)
    return requests, events


def readme_problems(text: str) -> list[str]:
    """Each way README.md's table of subjects differs from the subjects table, as a sentence."""
    requests, events = readme_subjects(text)
    problems = []
    for kind, listed, wanted in (
        ("request", requests, [f"{PREFIX}.{route.suffix}" for route in ROUTES]),
        ("event", events, [f"{PREFIX}.{event.suffix}" for event in EVENTS]),
    ):
        missing = [s for s in wanted if s not in listed]
        extra = [s for s in listed if s not in wanted]
        if missing or extra:
            problems.append(
                f"README.md, table of subjects, {kind} subjects: missing {missing}, not in the subjects table {extra}"
            )
    return problems


def test_the_readme_s_table_of_subjects_is_the_table() -> None:
    assert readme_problems((ROOT / "README.md").read_text()) == []


def test_the_readme_check_names_what_is_missing_or_extra() -> None:
    text = (ROOT / "README.md").read_text()
    requests, _ = readme_subjects(text)
    assert {f"{PREFIX}.load", f"{PREFIX}.all.status", f"{PREFIX}.all.cache.clear"} <= set(requests)
    changed = text.replace("`, `.all.status`", "`, `.all.statuz`", 1)
    changed = re.sub(r"\n\| `extensions\.graph` \|[^\n]*", "", changed, count=1)
    assert readme_problems(changed) == [
        f"README.md, table of subjects, request subjects: missing ['{PREFIX}.graph', '{PREFIX}.all.status'], not in "
        f"the subjects table ['{PREFIX}.all.statuz']",
    ]
