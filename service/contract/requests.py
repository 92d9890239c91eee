"""The requests of CONTRACT.md as msgspec structs: one per request subject's body.

They validate what arrives (types, names, unknown fields are refused). Each accepts an extension type in the
plural and in any letter case and normalises it to the lower-case singular that replies and events use.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from .values import NAME_PATTERN, VERSION_PATTERN, ExtensionType, Name, TypeName, VersionSpec

__all__ = [
    "DiscoverRequest",
    "EmptyRequest",
    "GraphRequest",
    "ListRequest",
    "LoadRequest",
    "ReloadRequest",
    "StatusRequest",
]

_TYPES = {t.value: t for t in ExtensionType}


def _one_line(request: Struct) -> None:
    """Python's `$` also matches before a final newline, which ECMA-262 and Rust do not: refuse it here."""
    for field, pattern in (("name", NAME_PATTERN), ("version", VERSION_PATTERN)):
        value = getattr(request, field, None)
        if isinstance(value, str) and value.endswith("\n"):
            raise ValueError(f"Expected `str` matching regex {pattern!r} - at `$.{field}`")


class _Typed(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    extension_type: TypeName

    def __post_init__(self) -> None:
        _one_line(self)
        # The pattern has admitted the spelling; store the canonical form so nothing downstream re-parses it.
        msgspec.structs.force_setattr(self, "extension_type", ExtensionType.parse(self.extension_type).value)

    @property
    def type(self) -> ExtensionType:
        return _TYPES[self.extension_type]  # a dict lookup costs a fifth of the enum's own call


class _OptionallyTyped(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    extension_type: TypeName | None = None

    def __post_init__(self) -> None:
        _one_line(self)
        if self.extension_type is not None:
            msgspec.structs.force_setattr(self, "extension_type", ExtensionType.parse(self.extension_type).value)

    @property
    def type(self) -> ExtensionType | None:
        return None if self.extension_type is None else _TYPES[self.extension_type]


class LoadRequest(_Typed, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Load one extension; answered from the cache when it is there."""

    name: Name
    version: VersionSpec | None = None
    with_dependencies: bool = False


class ReloadRequest(_Typed, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Drop every cached version of an extension and load it again from disk."""

    name: Name
    version: VersionSpec | None = None


class ListRequest(_OptionallyTyped, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What is loaded now, optionally of one type."""


class StatusRequest(_Typed, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether an extension (or one version of it) is loaded now."""

    name: Name
    version: VersionSpec | None = None


class DiscoverRequest(_OptionallyTyped, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What is available on disk, optionally of one type and name."""

    name: Name | None = None


class GraphRequest(_Typed, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The resolved dependency graph of one extension."""

    name: Name
    version: VersionSpec | None = None
    format: Literal["json", "dot", "mermaid"] = "json"


class EmptyRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `cache.clear` and `stats`: empty, or `{}`."""
