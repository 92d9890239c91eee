"""Configuration: typed, layered and validated once, at start.

Layers, each overriding the one before: the packaged `config.defaults.toml`, the user's file (`--config`),
environment variables `EXTENSION_LOADER__<SECTION>__<KEY>` (read by the key's type: a text key takes the text
as it is, other keys read it as TOML), and `key=value` overrides from the command line (TOML, but a text key
takes a bare value as text). String values may refer to other keys as `{{a.b.c}}`.
The result is a frozen `Config`; a bad file or value raises `ConfigError` naming the key. Keys outside the
sections this service reads are allowed, so an orchestrator's own file can be reused.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

from .errors import ConfigError

ENV_PREFIX = "EXTENSION_LOADER__"
_REF = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
# Tokens of a NATS subject without wildcards: no empty token, no white space, no `*` or `>`.
_SUBJECT = re.compile(r"[^\s.*>\x00-\x1f\x7f]+(\.[^\s.*>\x00-\x1f\x7f]+)*")
INBOX_ROOT = "_INBOX"
NO_AUTH_USER = "orchestrator"  # who a client without a user name is on nats.conf's development server

Positive = Annotated[int, Meta(ge=1)]
Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")]


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


Bucket = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)]
PublicKey = Annotated[str, Meta(pattern=r"^U[A-Z2-7]{55}$", description="an nkey user public key, U...")]


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
    auto_update: bool
    trusted: tuple[TrustedKey, ...]
    timeout_s: Annotated[float, Meta(gt=0, le=600)]
    max_archive_mb: Annotated[int, Meta(ge=1, le=4096)]
    max_unpacked_mb: Annotated[int, Meta(ge=1, le=16384)]
    max_files: Annotated[int, Meta(ge=1, le=1_000_000)]


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


# The keys the service reads and their types: what environment values are read by and what is interpolated.
_CONFIG_TYPE = cast(msgspec.inspect.StructType, msgspec.inspect.type_info(Config))


def inbox_prefix_for(user: str | None) -> str:
    """The inbox prefix nats.conf gives a user, `_INBOX.<user>`; without a user name, that of its development
    no_auth_user. A token or creds user has no name here: it sets `nats.inbox_prefix` (or `--inbox-prefix`)."""
    return f"{INBOX_ROOT}.{user or NO_AUTH_USER}"


def is_subject(text: str) -> bool:
    """A NATS subject of one or more tokens and no wildcard, as an inbox prefix must be."""
    return _SUBJECT.fullmatch(text) is not None


def defaults() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("config.defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_config(
    file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Builds the configuration from all its layers; raises ConfigError naming the offending key."""
    data = defaults()
    if file is not None:
        _merge(data, _read_file(Path(file)))
    for key, value in sorted((environ or {}).items()):
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            dotted = ".".join(part.lower() for part in key[len(ENV_PREFIX) :].split("__"))
            _set(data, dotted, _environment_value(dotted, value), origin=f"environment variable {key}")
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(item, "an override is written key=value, e.g. nats.url=nats://127.0.0.1:4222")
        _set(data, dotted.strip(), _override_value(dotted.strip(), value), origin="command line")
    return validate(_interpolate(data))


def validate(data: Mapping[str, Any]) -> Config:
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None
    _check_inbox(config.nats)
    _check_tls(config.nats)
    _check_registry(config.registry)
    return config


def _check_registry(registry: RegistryConfig) -> None:
    """Each pinned key's checksum is checked where the registry is set up (a typo would trust nobody)."""
    if registry.enabled and not registry.trusted:
        raise ConfigError(
            "registry.trusted",
            'the registry is enabled but no publisher key is trusted: add [[registry.trusted]] key = "U..." '
            "(`extension-loader keygen` prints a key)",
        )


def _check_inbox(nats: NatsConfig) -> None:
    if nats.inbox_prefix and not is_subject(nats.inbox_prefix):
        raise ConfigError(
            "nats.inbox_prefix",
            f"{nats.inbox_prefix!r} is not a NATS subject of dot-separated tokens without wildcards "
            "(e.g. _INBOX.loader)",
        )
    if not is_subject(nats.inbox):
        raise ConfigError(
            "nats.inbox_prefix",
            f"nats.user {nats.user!r} makes no valid inbox prefix ({nats.inbox!r}): set nats.inbox_prefix",
        )


def _check_tls(nats: NatsConfig) -> None:
    """TLS files are read at start, with a message that names the key, not at the first connection."""
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(nats, key)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"nats.{key}", f"{path!r} is not a readable file")
    if nats.tls_key and not nats.tls_cert:
        raise ConfigError("nats.tls_cert", "nats.tls_key is set: give the certificate that goes with it")
    try:
        nats.credentials()
    except (ssl.SSLError, OSError, ValueError) as exc:
        key = "nats.tls_cert" if nats.tls_cert else "nats.tls_ca"
        raise ConfigError(key, f"not a usable certificate: {exc}") from None


def _config_error(exc: msgspec.ValidationError) -> ConfigError:
    text = str(exc)
    message, _, where = text.rpartition(" - at `$")
    if not _:
        message, where = text, ""
    key = where.rstrip("`").lstrip(".").replace("[", ".").replace("]", "")
    unknown = re.search(r"unknown field `([^`]+)`", text)
    missing = re.search(r"missing required field `([^`]+)`", text)
    for match in (unknown, missing):
        if match:
            key = f"{key}.{match.group(1)}" if key else match.group(1)
    return ConfigError(key or "(top level)", message or text)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _environment_value(dotted: str, text: str) -> Any:
    """A variable's text, read by its key's type. A text key takes it as it is: a password of digits, `true` or
    a date is still text, and TOML would turn it into a number, a boolean or a date. Numbers, booleans and lists
    are read as TOML (`8`, `2.5`, `true`, `["/a", "/b"]`); what is not of the key's type fails validation."""
    if isinstance(_key_type(dotted), msgspec.inspect.StrType):
        return text
    return _parse_value(text)


def _override_value(dotted: str, text: str) -> Any:
    """A `--set` value is TOML (`nats.url="nats://..."`), but a text key takes a bare value that TOML reads as
    something else (`nats.password=123456`) as the text it is, as in the environment."""
    value = _parse_value(text)
    if isinstance(_key_type(dotted), msgspec.inspect.StrType) and not isinstance(value, str):
        return text
    return value


def _key_type(dotted: str) -> msgspec.inspect.Type | None:
    """The type of a key of `Config` (`nats.password`: text); None for a key the service does not read."""
    node: msgspec.inspect.Type | None = _CONFIG_TYPE
    for part in dotted.split("."):
        if not isinstance(node, msgspec.inspect.StructType):
            return None
        node = next((f.type for f in node.fields if f.name == part), None)
    return node


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _set(data: dict[str, Any], dotted: str, value: Any, *, origin: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{part} is not a table ({origin})")
        node = child
    node[parts[-1]] = value


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _interpolate(data: dict[str, Any]) -> dict[str, Any]:
    """Resolves `{{a.b.c}}` in the keys the service reads (those of `Config`), and leaves every other key as it
    is: an orchestrator's own keys may refer to things this service knows nothing of, and reusing its file is
    what the references are for. A reference may name any key of the file."""

    def resolve(value: Any, key: str, seen: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{key}.{k}" if key else k, seen) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{key}.{i}", seen) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def substitute(match: re.Match[str]) -> str:
            ref = match.group(1)
            if ref in seen:
                raise ConfigError(key, f"{{{{{ref}}}}} refers back to itself ({' -> '.join((*seen, ref))})")
            try:
                target = _lookup(data, ref)
            except KeyError:
                raise ConfigError(key, f"{{{{{ref}}}}} names no key") from None
            if isinstance(target, dict | list):
                raise ConfigError(key, f"{{{{{ref}}}}} is a table or list, not a value")
            return str(resolve(target, ref, (*seen, ref)))

        return _REF.sub(substitute, value)

    def walk(node: dict[str, Any], struct: msgspec.inspect.StructType, prefix: str) -> dict[str, Any]:
        out = dict(node)
        for field in struct.fields:
            if field.name not in node:
                continue
            key, value = f"{prefix}{field.name}", node[field.name]
            if isinstance(field.type, msgspec.inspect.StructType) and isinstance(value, dict):
                out[field.name] = walk(value, field.type, f"{key}.")
            else:
                out[field.name] = resolve(value, key, ())
        return out

    return walk(data, _CONFIG_TYPE, "")
