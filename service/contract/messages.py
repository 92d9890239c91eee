"""The wire messages of CONTRACT.md as msgspec structs: requests, replies, events.

The structs are the contract: they validate what arrives (types, names, unknown fields) and they are what
`schemas/` is generated from. Requests accept an extension type in the plural and in any letter case and
normalise it to the lower-case singular that replies and events use.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct


class ExtensionType(enum.StrEnum):
    PROVIDER = "provider"
    TASKSERV = "taskserv"
    CLUSTER = "cluster"

    @property
    def folder(self) -> str:
        """The folder of an extension root that holds extensions of this type."""
        return f"{self.value}s"

    @classmethod
    def parse(cls, text: str) -> ExtensionType:
        """Accepts `taskserv`, `Taskservs`, `TASKSERV`: any case, singular or plural."""
        word = text.strip().lower()
        if word.endswith("s"):
            word = word[:-1]
        return cls(word)


_TYPES = {t.value: t for t in ExtensionType}


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


# No lookaround, so the pattern means the same in Python, ECMA-262 (JSON Schema) and Rust's regex crate:
# each dot is followed by a non-dot, so ".." cannot occur.
NAME_PATTERN = r"^[a-z0-9](?:\.?[a-z0-9_-])*\.?$"
TYPE_PATTERN = "^(" + "|".join(_any_case(t.value) for t in ExtensionType) + ")[sS]?$"
VERSION_PATTERN = r"^[0-9A-Za-z.*^~<>=!, +-]+$"

TypeName = Annotated[
    str,
    Meta(
        pattern=TYPE_PATTERN,
        description="provider, taskserv or cluster; the plural and any letter case are accepted",
        examples=["taskserv"],
    ),
]
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN,
        description="1-64 characters of a-z 0-9 - _ ., starting with a letter or digit, no '..'",
        examples=["kubernetes"],
    ),
]
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339, UTC")]
VersionSpec = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=VERSION_PATTERN,
        description='an exact version, a constraint ("^1.28", "~1.28.0", ">=1.27,<2", "1.28.*") or "latest"',
        examples=["1.28.0", "^1.28", "latest"],
    ),
]


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


# --- replies ---


class ExtensionMetadata(Struct, frozen=True, kw_only=True):
    name: str
    version: str
    description: str
    extension_type: ExtensionType
    dependencies: tuple[str, ...] = ()
    author: str | None = None
    repository: str | None = None


class Extension(Struct, frozen=True, kw_only=True):
    metadata: ExtensionMetadata
    path: Annotated[str, Meta(description="where the extension's loaded files are")]
    loaded_at: Timestamp
    digest: Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


Source = Literal["disk", "registry"]


class VersionSource(Struct, frozen=True, kw_only=True):
    """Where one version of an extension comes from."""

    version: str
    source: Annotated[
        Source, Meta(description="disk: an extension root of this instance; registry: the JetStream registry")
    ]
    yanked: Annotated[
        bool, Meta(description="a yanked registry version: never chosen by a constraint, still loaded when pinned")
    ] = False
    trusted: Annotated[
        bool,
        Meta(
            description="false: a registry version whose signer or signature this instance does not trust; "
            "a load of it is refused with untrusted_extension"
        ),
    ] = True


class Available(Struct, frozen=True, kw_only=True, omit_defaults=True):
    extension_type: ExtensionType
    name: str
    versions: Annotated[
        tuple[str, ...], Meta(description="the versions a constraint may choose, newest first (yanked ones left out)")
    ]
    latest: Annotated[
        ExtensionMetadata | None, Meta(description="the highest stable version; null when there are only pre-releases")
    ]
    sources: Annotated[
        tuple[VersionSource, ...],
        Meta(
            description="every version, yanked ones included, newest first, with where it comes from; "
            "absent when every version is on this instance's disk (none comes from the registry)"
        ),
    ] = ()


class Status(Struct, frozen=True, kw_only=True):
    loaded: bool
    versions: Annotated[tuple[str, ...], Meta(description="the versions loaded now, newest first")]


class Cleared(Struct, frozen=True, kw_only=True):
    cleared: int


class CacheStats(Struct, frozen=True, kw_only=True):
    size: int
    capacity: int
    hits: int
    misses: int
    hit_ratio: float
    evictions: int


class LoadStats(Struct, frozen=True, kw_only=True):
    total: int
    cold: int
    failed: int
    coalesced: int


class NushellInfo(Struct, frozen=True, kw_only=True):
    path: str
    version: str


class EventStats(Struct, frozen=True, kw_only=True):
    published: int
    failed: Annotated[
        int, Meta(description="publishes that raised (e.g. the outbound buffer was full while disconnected)")
    ]


class RegistryStats(Struct, frozen=True, kw_only=True):
    reachable: Annotated[bool, Meta(description="false: JetStream cannot be reached; what was fetched is served")]
    extensions: Annotated[int, Meta(description="extensions in the index as this instance last read it")]
    versions: int
    fetched: Annotated[int, Meta(description="archives fetched and verified since start")]
    refused: Annotated[int, Meta(description="versions refused as untrusted since start")]
    auto_update: bool
    last_error: str | None = None


class Stats(Struct, frozen=True, kw_only=True):
    cache: CacheStats
    loads: LoadStats
    in_flight: int
    nushell: NushellInfo
    instance_id: str
    uptime_s: float
    events: EventStats | None = None
    registry: Annotated[RegistryStats | None, Meta(description="null: no [registry] configured")] = None


class GraphNode(Struct, frozen=True, kw_only=True):
    id: Annotated[str, Meta(description="type:name:version")]
    extension_type: ExtensionType
    name: str
    version: str


class GraphEdge(Struct, frozen=True, kw_only=True, rename={"from_": "from"}):
    from_: str
    to: str


class Graph(Struct, frozen=True, kw_only=True):
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    order: Annotated[tuple[str, ...], Meta(description="node ids in install order")]


class GraphText(Struct, frozen=True, kw_only=True):
    text: str


class MissingDependency(Struct, frozen=True, kw_only=True):
    """A declared dependency that no extension on disk meets."""

    dependency: Annotated[
        str,
        Meta(description="type:name; an entry declared without a type is given one as the contract says"),
    ]
    constraint: Annotated[
        str | None,
        Meta(
            description="the version constraint no available version meets, as declared; several constraints "
            "on the same dependency (from several dependents) are joined with ',' (all must hold); null: none",
            examples=["^2", "^1,^2"],
        ),
    ]
    available: Annotated[
        tuple[str, ...], Meta(description="the versions there are, newest first; empty: no such extension")
    ]


class DependencyErrorDetails(Struct, frozen=True, kw_only=True):
    """The `details` of a `dependency_error`."""

    missing: Annotated[
        tuple[MissingDependency, ...], Meta(description="dependencies not there, or with no version that fits")
    ]
    cycle: Annotated[tuple[str, ...], Meta(description="type:name entries that lead back to the first")]
    path: Annotated[
        tuple[str, ...], Meta(description="type:name from the requested extension to the one that failed")
    ] = ()


class ErrorBody(Struct, frozen=True, kw_only=True):
    code: Literal[
        "invalid_request",
        "not_found",
        "version_not_found",
        "dependency_error",
        "invalid_extension",
        "load_failed",
        "timeout",
        "unavailable",
        "untrusted_extension",
    ]
    message: str
    details: dict[str, Any] = {}


T = TypeVar("T")


class Success(Struct, Generic[T], frozen=True, kw_only=True):
    success: Literal[True] = True
    data: T


class Failure(Struct, frozen=True, kw_only=True):
    success: Literal[False] = False
    error: ErrorBody


class InstanceReply(Struct, Generic[T], frozen=True, kw_only=True):
    """One instance's answer on a fleet subject (`<prefix>.all.*`): its id and its own single-subject answer."""

    instance_id: str
    data: T


# --- events ---

LoadReason = Literal["load", "reload", "auto_load", "hot_reload", "published"]
UnloadReason = Literal["evicted", "cleared", "reload", "removed", "yanked"]


class ExtensionLoaded(Struct, frozen=True, kw_only=True):
    event_id: str
    reason: LoadReason
    extension: Extension
    cold: bool
    duration_ms: float
    instance_id: str
    timestamp: Timestamp


class ExtensionUnloaded(Struct, frozen=True, kw_only=True):
    event_id: str
    reason: UnloadReason
    extension_type: ExtensionType
    name: str
    version: str
    instance_id: str
    timestamp: Timestamp


Event = ExtensionLoaded | ExtensionUnloaded
