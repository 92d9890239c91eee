"""Audit lines: one structured log line (logger `service.audit`) for every change of state.

Each line says when (the log time), what (`action`, `extension`), the `outcome`, who asked (`requester`) and
the trace id (added by the log formatter from the current span). The requester is the request's `Requester`
header when it has one; the `extension-loader` client and command line send their connection name there.
Without one it is `nats:<subject>` of the request, and for changes the service makes by itself (auto_load,
hot reload, a peer's invalidation) it is the service's own NATS client name.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

REQUESTER_HEADER = "Requester"

log = logging.getLogger("service.audit")
requester: ContextVar[str] = ContextVar("requester", default="extension-loader")


def record(action: str, extension: str, outcome: str = "ok", message: str = "", **fields: object) -> None:
    who = requester.get()
    log.info(
        "%s %s: %s%s (by %s)",
        action,
        extension,
        outcome,
        f" {message}" if message else "",
        who,
        extra={"action": action, "extension": extension, "outcome": outcome, "requester": who, **fields},
    )
