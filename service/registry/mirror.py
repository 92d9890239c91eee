"""What a bucket's stream says of itself when it is a mirror: at an edge site, the registry's buckets are mirrors of
the hub's (`extension-loader setup --site`), read like the buckets themselves.

One `STREAM.INFO` under the registry's API prefix (a read every reader may make) gives the mirror's last sequence
and the time its newest message was stored at the hub, how far behind the hub it knew itself to be (`lag`), how
long ago it last heard from the hub (`active`: the hub sends it a heartbeat every second while nothing changes)
and what the server says is wrong with it. nats-py's `StreamInfo` has no `last_ts`, so the answer is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from .calls import Calls

_NEVER = -1  # `active` of a mirror that never heard from its origin


class _Source(msgspec.Struct, frozen=True):
    name: str = ""
    lag: int = 0
    active: int = _NEVER  # nanoseconds since it last heard from the origin
    error: dict[str, object] | None = None


class _State(msgspec.Struct, frozen=True):
    messages: int = 0
    last_seq: int = 0
    last_ts: datetime | None = None


class _Info(msgspec.Struct, frozen=True):
    state: _State = _State()
    mirror: _Source | None = None
    error: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class MirrorReading:
    """One stream's mirror, as the server described it at one moment."""

    stream: str
    last_sequence: int
    last_stored: datetime | None  # when its newest message was stored at the hub; None: it holds none
    lag: int
    heard_ago_s: float | None  # since it last heard from the hub, at the moment of reading; None: never
    error: str | None


async def read_mirror(calls: Calls, stream: str) -> MirrorReading | None:
    """The mirror `stream` as the server describes it now; None when the stream is there and not a mirror. A
    stream that is not there (or an answer that cannot be read) is a reading whose `error` says so. Raises what
    `calls.bounded` raises."""
    async with calls.bounded(f"read the state of stream {stream}"):
        reply = await calls.requested(f"STREAM.INFO.{stream}", b"")
    try:
        info = msgspec.json.decode(reply.data, type=_Info)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return missing(stream, f"its state cannot be read ({exc})")
    if info.error is not None:
        return missing(stream, str(info.error.get("description") or info.error))
    if info.mirror is None:
        return None
    mirror = info.mirror
    error = mirror.error
    return MirrorReading(
        stream=stream,
        last_sequence=info.state.last_seq,
        last_stored=info.state.last_ts if info.state.messages else None,
        lag=mirror.lag,
        heard_ago_s=None if mirror.active < 0 else mirror.active / 1e9,
        error=None if error is None else str(error.get("description") or error),
    )


def missing(stream: str, why: str) -> MirrorReading:
    """A mirror that cannot be read, or is not one: `extension-loader setup --site` makes it."""
    return MirrorReading(stream, 0, None, 0, None, f"{stream}: {why}; `extension-loader setup --site` makes it")
