"""`extension-loader setup` on a server: each stream it makes (`stream_settings.py`) created when missing, updated
when it differs, left alone when it does not, and refused when the update would lose data unless forced.

This is the only place the project creates or changes a stream: the loader and `publish` only look for theirs
and name `extension-loader setup` when one is missing. It runs as a user that may manage streams (`admin`);
a runtime user may not. A second run changes nothing and says so.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from .stream_settings import Target, apply, changes, mirror_of, show

TIMEOUT_S: Final = 10.0  # one JetStream call; making an R3 stream on a busy cluster takes a while
_NAME_IN_USE: Final = 10058  # another setup made the stream meanwhile


class Status(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Outcome:
    target: Target
    status: Status
    detail: str = ""  # what was made or changed, or why not

    @property
    def line(self) -> str:
        return f"{self.target.label}: {self.status.value}" + (f" ({self.detail})" if self.detail else "")


class SetupUnreachable(Exception):
    """JetStream did not answer for a stream: not enabled, another API prefix, or this user may not ask."""


async def set_up(
    nc: Client,
    targets: Sequence[Target],
    *,
    replicas: int | None = None,
    force: bool = False,
    timeout_s: float = TIMEOUT_S,
) -> list[Outcome]:
    """Each target made or brought to its settings, in order. `replicas`: the copies each should have (None:
    one for a stream it makes, as many as it has for one that is there). `force`: apply changes that lose data.
    Raises SetupUnreachable when JetStream does not answer."""
    outcomes = []
    for target in targets:
        js = nc.jetstream(prefix=target.api_prefix, timeout=timeout_s)
        try:
            outcomes.append(await _one(js, target, replicas, force))
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError) as exc:
            # ServiceUnavailableError (an APIError): nats-py's name for no one answering at that prefix.
            silence = f"no answer in {timeout_s:g} s" if isinstance(exc, nats.errors.TimeoutError) else "no responders"
            raise SetupUnreachable(
                f"{target.label}: {silence} on {target.api_prefix}.STREAM.INFO.{target.stream}: is JetStream "
                "enabled, is the API prefix right (events.api_prefix, registry.api_prefix), and may this user manage "
                "streams?"
            ) from None
        except APIError as exc:  # the server refused to make or change it
            outcomes.append(Outcome(target, Status.REFUSED, f"JetStream: {exc.description} ({exc.err_code})"))
    return outcomes


async def _one(js: JetStreamContext, target: Target, replicas: int | None, force: bool) -> Outcome:
    for _ in range(2):
        try:
            info = await js.stream_info(target.stream)
        except NotFoundError:
            copies = replicas or 1
            try:
                await target.make(js, copies)
            except APIError as exc:
                if exc.err_code == _NAME_IN_USE:
                    continue  # made meanwhile: compare it as it is
                raise
            return Outcome(target, Status.CREATED, _made(target, copies))
        return await _compare(js, target, info.config, replicas, force)
    raise AssertionError("unreachable: a stream that is in use is found the second time")


async def _compare(
    js: JetStreamContext, target: Target, config: api.StreamConfig, replicas: int | None, force: bool
) -> Outcome:
    if config.sealed:
        return Outcome(
            target,
            Status.REFUSED,
            "sealed: nothing more can be written to it, and a stream cannot be unsealed; delete it (losing what it "
            "holds) and run setup again",
        )
    wants_mirror = "mirror" in target.settings
    if (config.mirror is not None) != wants_mirror:
        return Outcome(target, Status.REFUSED, _not_a_mirror(config) if wants_mirror else _a_mirror(config))
    found = changes(target, config, replicas)
    if not found:
        return Outcome(target, Status.UNCHANGED)
    fixed = [c for c in found if not c.in_place]
    if fixed:
        return Outcome(target, Status.REFUSED, "; ".join(f"{c}: {c.loss}" for c in fixed))
    lossy = [c for c in found if c.loss is not None]
    if lossy and not force:
        why = "; ".join(f"{c}: {c.loss}" for c in lossy)
        rest = "".join(f"; also {c}" for c in found if c.loss is None)
        return Outcome(target, Status.REFUSED, f"{why}{rest}; --force applies it")
    await js.update_stream(apply(config, target, replicas))
    return Outcome(target, Status.UPDATED, "; ".join(str(c) for c in found))


def _not_a_mirror(config: api.StreamConfig) -> str:
    subjects = show(tuple(config.subjects or ()))
    return (
        f"a stream over {subjects} is here, not a mirror of the hub's: setup --site is for an edge site; there, "
        "delete the stream (losing what it holds) and run setup --site again"
    )


def _a_mirror(config: api.StreamConfig) -> str:
    return (
        f"this is an edge site's mirror of {mirror_of(config.mirror)}: run setup --site here (or delete the mirror "
        "to keep the registry itself on this server)"
    )


def _made(target: Target, replicas: int) -> str:
    copies = f"{replicas} {'replica' if replicas == 1 else 'replicas'}"
    if "mirror" in target.settings:
        return f"mirror of {mirror_of(target.settings['mirror'])}; {copies}"
    subjects = show(tuple(target.settings.get("subjects", ())))
    return f"subjects {subjects}; {copies}"
