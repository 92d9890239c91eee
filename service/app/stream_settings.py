"""What `extension-loader setup` makes, and what changing a stream to it would lose.

Three targets: the events stream (`events.stream`, exactly the event subjects of the subjects table) and the
registry's two buckets (`registry.index_bucket`, a Key-Value bucket keeping `HISTORY` revisions of a record;
`registry.archive_bucket`, an Object Store), each reached through its own JetStream API prefix. A target says
how to make its stream and which of the stream's settings setup keeps; `changes` compares a stream that is
there with them and says, for each difference, whether applying it would lose data (a time to live, a
retention other than limits, a smaller limit, fewer copies, another storage type). Settings a target does not
name (a description, placement, metadata) are left as an operator set them.

At an edge site (`setup --site`) the registry's two targets are mirrors of the hub's buckets instead
(`site_targets`): the same stream names (nats-py binds a bucket by its stream's name), no subjects of their own,
the hub reached under its JetStream API prefix, direct gets answered from the mirror, and the index keeping
`HISTORY` revisions of a record as the hub's does (nats-py's Key-Value refuses to bind a stream without it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nats.js import JetStreamContext, api

from ..contract.config import Config
from ..contract.subjects import EVENTS
from ..registry.buckets import HISTORY
from ..registry.names import BucketNames

UNLIMITED: Final = -1
_LIMITS: Final = ("max_msgs", "max_bytes", "max_msgs_per_subject")

# What every target keeps: nothing is ever deleted for its age, its count or its size, and it lives on disk.
_KEEP_EVERYTHING: Final[Mapping[str, Any]] = {
    "retention": api.RetentionPolicy.LIMITS,
    "max_age": 0.0,
    "max_msgs": UNLIMITED,
    "max_bytes": UNLIMITED,
    "max_msgs_per_subject": UNLIMITED,
    "storage": api.StorageType.FILE,
}

Make = Callable[[JetStreamContext, int], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Target:
    """One stream setup makes: how it is made, and the settings of it that setup keeps."""

    label: str  # as a person reads it: "events stream EXTENSION_EVENTS"
    stream: str
    api_prefix: str
    settings: Mapping[str, Any]  # StreamConfig field -> the value setup keeps it at
    make: Make  # creates the stream with that many replicas, with exactly `settings`
    names: Mapping[str, str] = field(default_factory=dict)  # a field's name as this target's users know it


@dataclass(frozen=True, slots=True)
class Change:
    """One setting of a stream that is there, as it is and as setup would set it."""

    name: str
    now: Any
    wanted: Any
    loss: str | None  # what applying it would lose; None: nothing
    in_place: bool = True  # False: JetStream cannot update a stream so (its storage): not even --force applies it

    def __str__(self) -> str:
        return f"{self.name} {show(self.now)} -> {show(self.wanted)}"


def targets(config: Config) -> list[Target]:
    """The events stream and the registry's buckets as this configuration names them."""
    registry = config.registry
    names = BucketNames(index=registry.index_bucket, archives=registry.archive_bucket)
    subjects = [f"{config.nats.subject_prefix}.{event.suffix}" for event in EVENTS]
    return [
        events_target(config.events.stream, subjects, config.events.api_prefix),
        *registry_targets(names, registry.api_prefix),
    ]


def events_target(stream: str, subjects: list[str], api_prefix: str = "$JS.API") -> Target:
    """The durable log of the events: exactly their subjects, nothing else (a stream over a request subject
    would answer requests with its own acknowledgements)."""

    async def make(js: JetStreamContext, replicas: int) -> None:
        await js.add_stream(
            api.StreamConfig(
                name=stream,
                subjects=subjects,
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=replicas,
            )
        )

    return Target(f"events stream {stream}", stream, api_prefix, {**_KEEP_EVERYTHING, "subjects": subjects}, make)


def registry_targets(names: BucketNames, api_prefix: str = "$JS.API") -> list[Target]:
    """The registry's buckets, made as nats-py makes buckets (so its Key-Value and Object Store bind to them):
    the index keeps `HISTORY` revisions of a record and answers direct gets; neither ever expires."""

    async def make_index(js: JetStreamContext, replicas: int) -> None:
        await js.create_key_value(
            bucket=names.index, history=HISTORY, storage=api.StorageType.FILE, replicas=replicas, direct=True
        )

    async def make_archives(js: JetStreamContext, replicas: int) -> None:
        await js.create_object_store(names.archives, storage=api.StorageType.FILE, replicas=replicas)

    bucket = {"allow_direct": True, "allow_rollup_hdrs": True, "discard": api.DiscardPolicy.NEW}
    index = {
        **_KEEP_EVERYTHING,
        **bucket,
        "subjects": [f"$KV.{names.index}.>"],
        "max_msgs_per_subject": HISTORY,
        "deny_delete": True,
    }
    archives = {**_KEEP_EVERYTHING, **bucket, "subjects": [f"$O.{names.archives}.C.>", f"$O.{names.archives}.M.>"]}
    return [
        Target(
            f"index bucket {names.index}",
            names.index_stream,
            api_prefix,
            index,
            make_index,
            {"max_msgs_per_subject": "history"},
        ),
        Target(f"archive bucket {names.archives}", names.archive_stream, api_prefix, archives, make_archives),
    ]


def site_targets(config: Config, hub_domain: str) -> list[Target]:
    """An edge site's streams: its own events stream, and mirrors of the registry's buckets of the hub whose
    JetStream domain is `hub_domain`."""
    registry = config.registry
    names = BucketNames(index=registry.index_bucket, archives=registry.archive_bucket)
    subjects = [f"{config.nats.subject_prefix}.{event.suffix}" for event in EVENTS]
    return [
        events_target(config.events.stream, subjects, config.events.api_prefix),
        *mirror_targets(names, hub_api(hub_domain), registry.api_prefix),
    ]


def hub_api(hub_domain: str) -> str:
    """Where a site reaches the JetStream API of the hub's domain across its leaf link."""
    return f"$JS.{hub_domain}.API"


def mirror_targets(names: BucketNames, hub: str, api_prefix: str = "$JS.API") -> list[Target]:
    """Mirrors of the registry's buckets, reached at the hub under the API prefix `hub`: each with the name of the
    stream it mirrors, its settings as the bucket's own (but no subjects), and direct gets answered here."""

    def maker(stream: str, settings: Mapping[str, Any]) -> Make:
        async def make(js: JetStreamContext, replicas: int) -> None:
            await js.add_stream(api.StreamConfig(name=stream, num_replicas=replicas, **settings))

        return make

    index_target, archive_target = registry_targets(names, api_prefix)
    made = []
    for target, kind in ((index_target, "index"), (archive_target, "archive")):
        source = api.StreamSource(name=target.stream, external=api.ExternalStream(api=hub))
        settings = {**target.settings, "subjects": None, "mirror": source, "mirror_direct": True}
        label = target.label.replace(f"{kind} bucket", f"{kind} mirror", 1)
        made.append(
            Target(label, target.stream, api_prefix, settings, maker(target.stream, settings), dict(target.names))
        )
    return made


def mirror_of(value: Any) -> str:
    """A stream's `mirror` setting as a person reads it: what it mirrors and where; "none" for a stream that is
    not a mirror."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        value = api.StreamSource.from_response(dict(value))
    external = value.external.api if value.external is not None else "this domain"
    return f"{value.name} at {external}"


def changes(target: Target, config: api.StreamConfig, replicas: int | None) -> list[Change]:
    """Each setting of the stream `config` that differs from the target's (`replicas`: the copies asked for;
    None keeps the stream's own), with what applying it would lose."""
    wanted = dict(target.settings)
    if replicas is not None:
        wanted["num_replicas"] = replicas
    found = []
    for key, value in wanted.items():
        now, want = normal(key, getattr(config, key)), normal(key, value)
        if now != want:
            name = target.names.get(key, _NAMES.get(key, key))
            found.append(Change(name, now, want, _loss(key, now, want), in_place=key not in ("storage", "mirror")))
    return found


def apply(config: api.StreamConfig, target: Target, replicas: int | None) -> api.StreamConfig:
    """The stream's configuration with the target's settings (every other one as it was)."""
    for key, value in target.settings.items():
        setattr(config, key, value)
    if replicas is not None:
        config.num_replicas = replicas
    return config


def normal(key: str, value: Any) -> Any:
    """A setting as it compares: JetStream writes "unlimited" as -1 or 0 or leaves it out, depending."""
    if key == "subjects":
        return tuple(sorted(value or ()))
    if key == "mirror":
        return mirror_of(value)
    if key == "max_age":
        return float(value or 0)
    if key in _LIMITS:
        return UNLIMITED if value is None or value <= 0 else int(value)
    if key == "num_replicas":
        return int(value or 1)
    if isinstance(value, str):
        return str(getattr(value, "value", value))
    return bool(value) if value is None or isinstance(value, bool) else value


def show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}s" if value else "none"
    if value == UNLIMITED:
        return "unlimited"
    return str(value)


_NAMES: Final = {
    "num_replicas": "replicas",
    "allow_direct": "direct gets",
    "allow_rollup_hdrs": "rollups",
    "mirror": "mirror of",
    "mirror_direct": "direct gets from the mirror",
}


def _loss(key: str, now: Any, want: Any) -> str | None:
    """What setting `key` from `now` to `want` would lose, or None."""
    if key == "max_age" and want and (not now or want < now):
        return "messages older than that would be deleted"
    if key == "retention" and want != api.RetentionPolicy.LIMITS.value:
        return f"retention {want} deletes messages once they are consumed"
    if key in _LIMITS and want != UNLIMITED and (now == UNLIMITED or want < now):
        return "messages beyond it would be deleted"
    if key == "num_replicas" and want < now:
        return "fewer copies: a server lost takes more with it"
    if key == "mirror":
        return (
            "JetStream cannot make a mirror mirror another stream in place: delete it (what it holds is the hub's) and "
            "run setup --site again"
        )
    if key == "storage":
        return (
            "JetStream cannot change a stream's storage in place: delete the stream (losing what it holds) and run "
            "setup again"
        )
    return None
