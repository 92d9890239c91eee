"""Version constraints: the forms the contract names, and pre-releases only when asked for."""

from __future__ import annotations

import pytest

from service.contract.errors import InvalidRequest
from service.core.versions import Constraint, sort_newest_first

VERSIONS = ["1.27.5", "1.28.0", "1.28.3", "1.29.2", "2.0.0", "1.30.0-rc.1", "2.1.0-beta.2"]


@pytest.mark.parametrize(
    ("spec", "best"),
    [
        (None, "2.0.0"),
        ("latest", "2.0.0"),
        ("1.28.0", "1.28.0"),
        ("^1.28", "1.29.2"),
        ("~1.28.0", "1.28.3"),
        (">=1.27,<2", "1.29.2"),
        ("1.28.*", "1.28.3"),
        ("<1.28", "1.27.5"),
        ("1.30.0-rc.1", "1.30.0-rc.1"),
        (">=1.30.0-rc.1,<2", "1.30.0-rc.1"),
        ("^3", None),
        ("1.28.9", None),
    ],
)
def test_best_match(spec: str | None, best: str | None) -> None:
    assert Constraint.parse(spec).best(VERSIONS) == best


def test_pre_releases_only_when_named() -> None:
    assert not Constraint.parse("^1.28").matches("1.30.0-rc.1")
    assert not Constraint.parse(None).matches("2.1.0-beta.2")
    assert Constraint.parse(">=2.1.0-beta.1").matches("2.1.0-beta.2")


@pytest.mark.parametrize("spec", [">=x", "1.2.3.4.5", "^^1", "=>1.0"])
def test_bad_constraints_are_invalid_requests(spec: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        Constraint.parse(spec)
    assert info.value.field == "version"


def test_sort_newest_first_drops_non_versions() -> None:
    assert sort_newest_first(["1.0.0", "junk", "1.10.0", "1.2.0", "1.10.0-rc.1"]) == [
        "1.10.0",
        "1.10.0-rc.1",
        "1.2.0",
        "1.0.0",
    ]
