"""The wire messages of CONTRACT.md as msgspec structs, all under one name: import them from here.

The structs are the contract: they validate what arrives (types, names, unknown fields) and they are what
`schemas/` is generated from. Each idea has its own module:

    values.py      extension types, names, version specs, timestamps and their patterns
    requests.py    the request bodies, one per request subject
    replies.py     what a successful reply's `data` holds
    envelopes.py   the success and failure envelopes, the error body, the fleet's per-instance answer
    events.py      the events, and `Event`, either of them

Which subject takes which request and answers with which data is the subjects table (`subjects.py`).
"""

from __future__ import annotations

from .envelopes import (
    DependencyErrorDetails,
    ErrorBody,
    Failure,
    InstanceReply,
    MissingDependency,
    Success,
)
from .events import Event, ExtensionLoaded, ExtensionUnloaded, LoadReason, UnloadReason
from .replies import (
    Available,
    CacheStats,
    Cleared,
    EventStats,
    Extension,
    ExtensionMetadata,
    Graph,
    GraphEdge,
    GraphNode,
    GraphText,
    LoadStats,
    NushellInfo,
    RegistryStats,
    Source,
    Stats,
    Status,
    VersionSource,
)
from .requests import (
    DiscoverRequest,
    EmptyRequest,
    GraphRequest,
    ListRequest,
    LoadRequest,
    ReloadRequest,
    StatusRequest,
)
from .values import (
    NAME_PATTERN,
    TYPE_PATTERN,
    VERSION_PATTERN,
    ExtensionType,
    Name,
    Timestamp,
    TypeName,
    VersionSpec,
)

__all__ = [
    "NAME_PATTERN",
    "TYPE_PATTERN",
    "VERSION_PATTERN",
    "Available",
    "CacheStats",
    "Cleared",
    "DependencyErrorDetails",
    "DiscoverRequest",
    "EmptyRequest",
    "ErrorBody",
    "Event",
    "EventStats",
    "Extension",
    "ExtensionLoaded",
    "ExtensionMetadata",
    "ExtensionType",
    "ExtensionUnloaded",
    "Failure",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "GraphRequest",
    "GraphText",
    "InstanceReply",
    "ListRequest",
    "LoadReason",
    "LoadRequest",
    "LoadStats",
    "MissingDependency",
    "Name",
    "NushellInfo",
    "RegistryStats",
    "ReloadRequest",
    "Source",
    "Stats",
    "Status",
    "StatusRequest",
    "Success",
    "Timestamp",
    "TypeName",
    "UnloadReason",
    "VersionSource",
    "VersionSpec",
]
