"""Replies written as ready-made NATS protocol frames: the header block and the body of a reply are the same
for every request a cached extension answers, so only the reply subject changes.

nats-py's `publish(headers=...)` validates and encodes the header block on every call, which costs a cached
answer as much as all of the service's own work (profiled at 128 in flight: ~2.9 us of ~16 us a request). Here
the header block is built once (`header_block`) and each frame (`HPUB <subject> <lengths>`, the block, the
body) handed to the client's own outgoing buffer, exactly as `publish` would hand it, with the same checks
(closed, draining, payload size, the buffer limit while reconnecting) and the same statistics.

That buffer is nats-py's private API, so this is used only with the nats-py release the project pins and
tests (`PINNED`); with any other, `FrameWriter.usable` is False and the dispatcher uses `publish`. A test
sends the same reply both ways through a real server and requires the same message at the other end.
"""

from __future__ import annotations

from importlib import metadata

import nats.errors
from nats.aio.client import Client

PINNED = "2.16.0"  # pyproject.toml pins nats-py to this release; the private names below are its
_CRLF = b"\r\n"


def nats_py_version() -> str:
    try:
        return metadata.version("nats-py")
    except metadata.PackageNotFoundError:
        return "unknown"


def header_block(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block, as nats-py writes it for these (already valid) headers."""
    lines = b"".join(f"{k}: {v}".encode() + _CRLF for k, v in headers.items())
    return b"NATS/1.0" + _CRLF + lines + _CRLF


class FrameWriter:
    def __init__(self, nc: Client, *, version: str | None = None) -> None:
        self._nc = nc
        self.usable = (version or nats_py_version()) == PINNED and all(
            hasattr(nc, name) for name in ("_send_command", "_flush_queue", "_flush_pending", "stats")
        )

    async def reply(self, subject: str, header: bytes, body: bytes) -> None:
        """What `nc.publish(subject, body, headers=...)` does, for a header block built once."""
        nc = self._nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        size = len(body)
        if not nc.is_connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            raise nats.errors.OutboundBufferLimitError
        if size > nc.max_payload:
            raise nats.errors.MaxPayloadError
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += size
        lengths = f" {len(header)} {len(header) + size}\r\n".encode()
        await nc._send_command(b"".join((b"HPUB ", subject.encode(), lengths, header, body, _CRLF)))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
