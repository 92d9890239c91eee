"""Audit lines: one structured log line (logger `service.audit`) for every change of state.

Each line says when (the log time), what (`action`, `extension`), the `outcome`, who asked (`requester`) and
the trace id (added by the log formatter from the current span). The requester is the request's `Requester`
header when it has one; the `extension-loader` client and command line send their connection name there.
Without one it is `nats:<subject>` of the request, and for changes the service makes by itself (auto_load,
hot reload, a peer's invalidation) it is the service's own NATS client name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar

from ..contract.headers import REQUESTER, header

log = logging.getLogger("service.audit")
# The request being handled (its headers and subject), read only when a line is written: most requests change
# nothing, and looking the header up for each would cost every cached answer.
_request: ContextVar[tuple[Mapping[str, str] | None, str] | None] = ContextVar("request", default=None)
_actor: ContextVar[str] = ContextVar("actor", default="extension-loader")


def handling(headers: Mapping[str, str] | None, subject: str) -> None:
    """What follows in this task is done for this request."""
    _request.set((headers, subject))


def acting_as(name: str) -> None:
    """What follows in this task, and in tasks started from it, the service does by itself, under this name."""
    _actor.set(name)


def requester() -> str:
    request = _request.get()
    if request is None:
        return _actor.get()
    headers, subject = request
    given = header(headers, REQUESTER)
    if given:
        # The requester's own words: one line of printable text, bounded, so no one writes lines into the log.
        given = " ".join("".join(c if c.isprintable() else " " for c in given[:200]).split())
    return given or f"nats:{subject}"


def record(action: str, extension: str, outcome: str = "ok", message: str = "", **fields: object) -> None:
    who = requester()
    log.info(
        "%s %s: %s%s (by %s)",
        action,
        extension,
        outcome,
        f" {message}" if message else "",
        who,
        extra={"action": action, "extension": extension, "outcome": outcome, "requester": who, **fields},
    )
