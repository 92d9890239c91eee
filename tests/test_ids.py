"""Every parametrized test keeps its id from one run to the next: a mutation run maps each mutant to the tests
that cover it by id, and a failing case is re-run by it. An id built from run-dependent data (an object's
address, a temporary path, a random key, UUID or bytes) shows one of the shapes below; the ids of every test
collected with this one are read, so nothing needs to be collected twice."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import nkeys
import pytest


def _base32_run(test_id: str) -> bool:
    """40 characters or more of base32 with digits among them: an NKey or seed, whole or mangled."""
    return any(sum(c.isdigit() for c in run) >= 3 for run in re.findall(r"[A-Za-z2-7]{40,}", test_id))


def _random_bytes(test_id: str) -> bool:
    """Escaped bytes of many values (a fixed pattern repeats a few)."""
    return len(set(re.findall(r"\\x[0-9a-f]{2}", test_id))) >= 8


RUN_DEPENDENT: dict[str, Callable[[str], object]] = {
    "an object's address": re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{8,}").search,
    "a temporary path": re.compile(re.escape(tempfile.gettempdir()) + "/|pytest-of-").search,
    "a key or seed (NKey)": _base32_run,
    "a UUID": re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}").search,
    "random bytes": _random_bytes,
}


def run_dependent(test_id: str) -> list[str]:
    return [shape for shape, found in RUN_DEPENDENT.items() if found(test_id)]


def test_no_test_id_holds_run_dependent_data(request: pytest.FixtureRequest) -> None:
    found = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and (shapes := run_dependent(callspec.id)):
            found[item.nodeid] = shapes
    assert found == {}, "give these tests fixed ids (ids=... or pytest.param(..., id=...))"


def test_the_shapes_are_recognised(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    key = nkeys.from_seed(seed).public_key.decode()
    examples = {
        "an object's address": [repr(object())],
        "a temporary path": [str(tmp_path / "x")],
        "a key or seed (NKey)": [key, key[:-1], key.lower(), seed.decode(), seed.decode() + "AAAA"],
        "a UUID": [str(uuid.uuid4()), uuid.uuid4().hex],
        "random bytes": [bytes(range(128, 140)).decode("latin-1").encode("unicode_escape").decode()],
    }
    for shape, cases in examples.items():
        for example in cases:
            assert run_dependent(f"case-{example}-1") == [shape], example
    stable = ["taskserv-kubernetes-1.28.0", "0644", "\\xe4", "\\xff\\xfe" * 29, "k" * 65, "data13-the release"]
    for test_id in stable:
        assert run_dependent(test_id) == [], test_id
