"""The events the service publishes, `<prefix>.loaded` and `<prefix>.unloaded`, and why each is sent."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from .replies import Extension
from .values import ExtensionType, Timestamp

__all__ = ["Event", "ExtensionLoaded", "ExtensionUnloaded", "LoadReason", "UnloadReason"]

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
