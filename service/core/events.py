"""The events a change of the cache causes, as the contract's messages: `extensions.loaded` for a cold load
and `extensions.unloaded` for an entry that leaves the cache. The core only makes them; each operation returns
the events it caused, in order, and the wire publishes them once it has replied."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from ..contract.messages import Extension, ExtensionLoaded, ExtensionType, ExtensionUnloaded, LoadReason, UnloadReason

Clock = Callable[[], datetime]


def new_id() -> str:
    return uuid.uuid4().hex


class EventFactory:
    """Events of one instance, stamped with its id and its clock."""

    def __init__(self, instance_id: str, clock: Clock) -> None:
        self.instance_id = instance_id
        self._clock = clock

    def loaded(
        self, extension: Extension, reason: LoadReason, duration_ms: float, *, cold: bool = True
    ) -> ExtensionLoaded:
        """`cold`: this load ran Nushell; False for what was loaded already (by a request, ahead of `auto_update`)."""
        return ExtensionLoaded(
            event_id=new_id(),
            reason=reason,
            extension=extension,
            cold=cold,
            duration_ms=round(duration_ms, 3),
            instance_id=self.instance_id,
            timestamp=self._clock(),
        )

    def unloaded(self, extension: Extension, reason: UnloadReason) -> ExtensionUnloaded:
        meta = extension.metadata
        return self.unloaded_version(meta.extension_type, meta.name, meta.version, reason)

    def unloaded_version(
        self, extension_type: ExtensionType, name: str, version: str, reason: UnloadReason
    ) -> ExtensionUnloaded:
        return ExtensionUnloaded(
            event_id=new_id(),
            reason=reason,
            extension_type=extension_type,
            name=name,
            version=version,
            instance_id=self.instance_id,
            timestamp=self._clock(),
        )
