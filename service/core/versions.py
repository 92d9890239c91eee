"""Semantic versions and constraints, on top of the `semantic_version` library.

A request names an exact version, a constraint (`^1.28`, `~1.28.0`, `>=1.27,<2`, `1.28.*`), `latest`, or
nothing (= latest). Latest is the highest stable version; pre-releases are candidates only when the
constraint itself names one (`>=1.30.0-rc.1`), or when it is the exact version asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import semantic_version as sv

from ..contract.errors import InvalidRequest


@lru_cache(maxsize=4096)
def parse_version(text: str) -> sv.Version | None:
    """The version, or None when `text` is not a semantic version."""
    try:
        return sv.Version(text)
    except ValueError:
        return None


def sort_newest_first(versions: Iterable[str]) -> list[str]:
    parsed = [(v, parse_version(v)) for v in versions]
    return [v for v, p in sorted(parsed, key=lambda item: item[1] or sv.Version("0.0.0"), reverse=True) if p]


@dataclass(frozen=True, slots=True)
class Constraint:
    """A parsed version request; `matches` picks the candidates, `best` the one to load."""

    text: str
    spec: sv.SimpleSpec | None  # None: any stable version ("latest")
    allows_prerelease: bool

    @classmethod
    def parse(cls, text: str | None, *, field: str = "version") -> Constraint:
        raw = (text or "").strip()
        if raw in ("", "latest", "*"):
            return cls("latest", None, False)
        exact = parse_version(raw)
        spec_text = f"=={raw}" if exact is not None else raw
        try:
            spec = sv.SimpleSpec(spec_text)
        except ValueError:
            # The library's own text ("Invalid simple block ...") names its parser's internals, not the fix.
            raise InvalidRequest(
                f"{raw!r} is not a version or constraint; use e.g. 1.28.0, ^1.28, ~1.28.0, "
                '">=1.27,<2", 1.28.* or latest',
                field=field,
            ) from None
        return cls(raw, spec, "-" in raw)

    def matches(self, version: str) -> bool:
        parsed = parse_version(version)
        if parsed is None:
            return False
        if parsed.prerelease and not self.allows_prerelease:
            return False
        return self.spec is None or self.spec.match(parsed)

    def best(self, versions: Iterable[str]) -> str | None:
        for version in sort_newest_first(versions):
            if self.matches(version):
                return version
        return None
