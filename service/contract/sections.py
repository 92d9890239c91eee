"""The configuration's sections as typed structs: every key the service reads, with its type and bounds.

`Config` is the whole, one section per table of the TOML file (`orchestrator`, `nushell`, `nats`, `events`,
`registry`); `config.py` reads the layers into it. A few values are derived from the keys here: the NATS
servers, credentials and inbox prefix (nats.conf's per-user `_INBOX.<user>`), and the resolved paths.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

# Tokens of a NATS subject without wildcards: no empty token, no white space, no `*` or `>`.
_SUBJECT = re.compile(r"[^\s.*>\x00-\x1f\x7f]+(\.[^\s.*>\x00-\x1f\x7f]+)*")
INBOX_ROOT = "_INBOX"
NO_AUTH_USER = "orchestrator"  # who a client without a user name is on nats.conf's development server

Positive = Annotated[int, Meta(ge=1)]
Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")]
DEFAULT_API_PREFIX = "$JS.API"


class PathsConfig(Struct, frozen=True, kw_only=True):
    data_dir: str


class ExtensionsConfig(Struct, frozen=True, kw_only=True):
    auto_load: bool
    watch: bool
    cache_dir: Annotated[str, Meta(min_length=1)]
    paths: Annotated[tuple[Annotated[str, Meta(min_length=1)], ...], Meta(min_length=1)]
    cache_size: Annotated[int, Meta(ge=1, le=1_000_000)]


class OrchestratorConfig(Struct, frozen=True, kw_only=True):
    paths: PathsConfig
    extensions: ExtensionsConfig


class NushellConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    timeout_s: Annotated[float, Meta(gt=0, le=3600)]
    max_concurrent: Annotated[int, Meta(ge=1, le=256)]
    max_pending: Annotated[int, Meta(ge=0, le=100_000)]
    max_memory_mb: Annotated[int, Meta(ge=64, le=1_048_576)]
    max_output_kb: Positive
    max_file_mb: Positive
    nice: Annotated[int, Meta(ge=0, le=19)]
    allow_unlimited: bool
    spares: Annotated[int, Meta(ge=0, le=64)]
    spare_max_age_s: Annotated[float, Meta(gt=0, le=86_400)]


# The start of a reply subject: tokens ending with a dot, no wildcard, no white space (`_INBOX.`).
ReplyPrefix = Annotated[str, Meta(min_length=2, pattern=r"^[^\s*>]+\.$")]


class NatsConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1)]
    queue_group: Token
    subject_prefix: Token
    name: Annotated[str, Meta(min_length=1)]
    user: str
    password: str
    token: str
    creds: str
    tls_ca: str
    tls_cert: str
    tls_key: str
    inbox_prefix: str
    # A reply subject the service answers must start with one of these (NATS checks no permission on it).
    reply_prefixes: Annotated[
        tuple[Annotated[str, Meta(min_length=1, pattern=r"^[^\s*>]+\.$")], ...], Meta(min_length=1)
    ]
    drain_timeout_s: Annotated[float, Meta(gt=0, le=3600)]

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key) or any(u.startswith("tls://") for u in self.servers)

    @property
    def inbox(self) -> str:
        """Where replies to this client arrive: `inbox_prefix`, else the prefix nats.conf gives `user`."""
        return self.inbox_prefix or inbox_prefix_for(self.user)

    def credentials(self) -> dict[str, Any]:
        """The servers, credentials, TLS context and inbox prefix as nats-py's `connect` takes them. The inbox
        prefix goes with the credentials: nats.conf lets each user receive replies under its own prefix only."""
        options: dict[str, Any] = {"servers": self.servers, "inbox_prefix": self.inbox}
        if self.user:
            options.update(user=self.user, password=self.password)
        if self.token:
            options["token"] = self.token
        if self.creds:
            options["user_credentials"] = self.creds
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls_ca or None)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key or None)
            options["tls"] = context
        return options


class EventsConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    jetstream: bool
    stream: Token
    api_prefix: str  # where the stream's JetStream API is, seen from this connection (a subject: config.py)
    require_stream: bool  # without jetstream: still check at start that the stream is there


Bucket = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)]
PublicKey = Annotated[
    str,
    Meta(pattern=r"^[OU][A-Z2-7]{55}$", description="a release key, O... (a user key, U..., only with accept_v1)"),
]


class TrustedKey(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A publisher key this loader trusts, optionally for some types or names only (empty: any)."""

    key: PublicKey
    types: tuple[Literal["provider", "taskserv", "cluster"], ...] = ()
    names: tuple[Annotated[str, Meta(min_length=1)], ...] = ()
    comment: str = ""

    def allows(self, extension_type: str, name: str) -> bool:
        return (not self.types or extension_type in self.types) and (not self.names or name in self.names)


class RegistryConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool
    index_bucket: Bucket
    archive_bucket: Bucket
    api_prefix: str  # where the buckets' JetStream API is, seen from this connection (a subject: config.py)
    auto_update: bool
    trusted: tuple[TrustedKey, ...]
    timeout_s: Annotated[float, Meta(gt=0, le=600)]
    max_archive_mb: Annotated[int, Meta(ge=1, le=4096)]
    max_unpacked_mb: Annotated[int, Meta(ge=1, le=16384)]
    max_files: Annotated[int, Meta(ge=1, le=1_000_000)]
    # The old format (v1: only identity and archive digest signed, by user keys): refused unless this is set.
    accept_v1: bool = False
    # Seconds the view of the index may age (since the newest signed timestamp) before it is called stale; 0: off.
    max_age_s: Annotated[float, Meta(ge=0)] = 0


class Config(Struct, frozen=True, kw_only=True):
    orchestrator: OrchestratorConfig
    nushell: NushellConfig
    nats: NatsConfig
    events: EventsConfig
    registry: RegistryConfig

    @property
    def extension_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser().resolve() for p in self.orchestrator.extensions.paths)

    @property
    def cache_dir(self) -> Path:
        return Path(self.orchestrator.extensions.cache_dir).expanduser().resolve()


def inbox_prefix_for(user: str | None) -> str:
    """The inbox prefix nats.conf gives a user, `_INBOX.<user>`; without a user name, that of its development
    no_auth_user. A token or creds user has no name here: it sets `nats.inbox_prefix` (or `--inbox-prefix`)."""
    return f"{INBOX_ROOT}.{user or NO_AUTH_USER}"


def is_subject(text: str) -> bool:
    """A NATS subject of one or more tokens and no wildcard, as an inbox prefix must be."""
    return _SUBJECT.fullmatch(text) is not None
