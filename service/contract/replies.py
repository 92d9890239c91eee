"""What a successful reply's `data` holds, subject by subject (CONTRACT.md, "Shapes"): extensions, what is
available, status, statistics, graphs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .values import ExtensionType, Timestamp

__all__ = [
    "Available",
    "CacheStats",
    "Cleared",
    "EventStats",
    "Extension",
    "ExtensionMetadata",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "GraphText",
    "LoadStats",
    "MirrorStats",
    "NushellInfo",
    "RegistryStats",
    "Source",
    "Stats",
    "Status",
    "VersionSource",
]


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


class MirrorStats(Struct, frozen=True, kw_only=True):
    """An edge site's copy of the registry: its index and archives are mirrors of the hub's, read here."""

    hub_reachable: Annotated[
        bool,
        Meta(
            description="false: a mirror has not heard from the hub for a while, or says what is wrong; what it "
            "holds is served"
        ),
    ]
    last_sequence: Annotated[int, Meta(description="the index mirror's last sequence: the hub's, as far as it has it")]
    age_s: Annotated[
        float | None,
        Meta(description="seconds since the newest record the index mirror holds was written at the hub; null: empty"),
    ]
    lag: Annotated[int, Meta(description="index records the hub had that the mirror did not, when last heard from")]
    heard_s: Annotated[
        float | None, Meta(description="seconds since the index mirror last heard from the hub; null: never")
    ]
    archives_last_sequence: int
    archives_lag: int
    error: Annotated[str | None, Meta(description="what the server says is wrong with a mirror; null: nothing")] = None


class RegistryStats(Struct, frozen=True, kw_only=True):
    reachable: Annotated[bool, Meta(description="false: JetStream cannot be reached; what was fetched is served")]
    extensions: Annotated[int, Meta(description="extensions in the index as this instance last read it")]
    versions: int
    fetched: Annotated[int, Meta(description="archives fetched and verified since start")]
    refused: Annotated[int, Meta(description="versions refused as untrusted since start")]
    auto_update: bool
    last_error: str | None = None
    view_age_s: Annotated[
        float | None, Meta(description="seconds since the newest signed timestamp of the index; null: none seen")
    ] = None
    stale: Annotated[
        str | None, Meta(description="why this view of the index is stale (registry.max_age_s); null: it is not")
    ] = None
    rollbacks: Annotated[int, Meta(description="records ignored: their signed state older than one seen")] = 0
    unsigned: Annotated[int, Meta(description="what records said that no trusted key signed, ignored")] = 0
    mirror: Annotated[
        MirrorStats | None, Meta(description="an edge site's mirror of the hub's registry; null: the registry itself")
    ] = None


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
