"""Other instances' events: every instance hears every other one's `loaded` and `unloaded` (no queue group)
and forgets what a peer reloaded, cleared or saw removed, so no one serves stale metadata.

What it may do is tell the manager to forget; it publishes nothing (the peer already announced it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg

from ..contract.messages import Extension, ExtensionLoaded, ExtensionType
from ..contract.subjects import EVENTS, event_suffix
from ..core.manager import ExtensionManager
from .event_filter import genuine_event

log = logging.getLogger(__name__)


class PeerEvent(msgspec.Struct, frozen=True):
    """What an instance reads of another one's `loaded` and `unloaded` events."""

    instance_id: str
    reason: str
    extension_type: ExtensionType | None = None  # unloaded events
    name: str | None = None
    version: str | None = None
    extension: Extension | None = None  # loaded events

    def target(self) -> tuple[ExtensionType, str, str] | None:
        if self.extension is not None:
            m = self.extension.metadata
            return m.extension_type, m.name, m.version
        if self.extension_type is not None and self.name is not None and self.version is not None:
            return self.extension_type, self.name, self.version
        return None


_decoder = msgspec.json.Decoder(PeerEvent)


class PeerListener:
    def __init__(self, manager: ExtensionManager, *, prefix: str, on_event: Callable[[], None] = lambda: None) -> None:
        self.manager = manager
        self.subjects = frozenset(f"{prefix}.{event.suffix}" for event in EVENTS)
        self.loaded_subject = f"{prefix}.{event_suffix(ExtensionLoaded)}"
        self.handled = 0  # peers' events acted on
        self.ignored = 0  # messages on the event subjects that were not events (event_filter.py)
        self._on_event = on_event

    async def on_message(self, msg: Msg) -> None:
        if not genuine_event(msg, self.subjects):
            self.ignored += 1
            log.warning("ignored a message on %s that is not an event a loader published", msg.subject)
            self._on_event()
            return
        try:
            event = _decoder.decode(msg.data)
        except msgspec.DecodeError as exc:  # JetStream's own answers, sent here, come without a mark but this
            self.ignored += 1
            log.warning("ignored an unreadable event on %s: %s", msg.subject, exc)
            self._on_event()
            return
        target = event.target()
        if event.instance_id == self.manager.instance_id or target is None:
            return
        dropped = self.manager.unload_for_peer(msg.subject == self.loaded_subject, event.reason, *target)
        self.handled += 1
        self._on_event()
        if dropped:
            log.info(
                "dropped %d cache entries after %s from instance %s",
                len(dropped),
                msg.subject,
                event.instance_id,
                extra={"dropped": dropped},
            )
