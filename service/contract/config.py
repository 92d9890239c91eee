"""Configuration: read in layers and validated once, at start.

Layers, each overriding the one before: the packaged `config.defaults.toml`, the user's file (`--config`),
environment variables `EXTENSION_LOADER__<SECTION>__<KEY>` (read by the key's type: a text key takes the text
as it is, other keys read it as TOML), and `key=value` overrides from the command line (TOML, but a text key
takes a bare value as text). String values may refer to other keys as `{{a.b.c}}`.
The result is a frozen `Config`; a bad file or value raises `ConfigError` naming the key. Keys outside the
sections this service reads are allowed, so an orchestrator's own file can be reused.

The keys and their types are the sections in `sections.py`, re-exported here: `from .config import Config`.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, cast

import msgspec
import msgspec.inspect

from .errors import ConfigError
from .sections import (
    INBOX_ROOT,
    NO_AUTH_USER,
    Config,
    EventsConfig,
    ExtensionsConfig,
    NatsConfig,
    NushellConfig,
    OrchestratorConfig,
    PathsConfig,
    RegistryConfig,
    TrustedKey,
    inbox_prefix_for,
    is_subject,
)

__all__ = [
    "ENV_PREFIX",
    "INBOX_ROOT",
    "NO_AUTH_USER",
    "Config",
    "EventsConfig",
    "ExtensionsConfig",
    "NatsConfig",
    "NushellConfig",
    "OrchestratorConfig",
    "PathsConfig",
    "RegistryConfig",
    "TrustedKey",
    "defaults",
    "inbox_prefix_for",
    "is_subject",
    "load_config",
    "validate",
]

ENV_PREFIX = "EXTENSION_LOADER__"
_REF = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")

# The keys the service reads and their types: what environment values are read by and what is interpolated.
_CONFIG_TYPE = cast(msgspec.inspect.StructType, msgspec.inspect.type_info(Config))


def defaults() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("config.defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_config(
    file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    layer: Mapping[str, Any] | None = None,
) -> Config:
    """Builds the configuration from all its layers; raises ConfigError naming the offending key. `layer`:
    `section.key` values over the packaged defaults and under everything else (what `extension-loader dev` knows
    of the server it started)."""
    data = defaults()
    for dotted, value in (layer or {}).items():
        _set(data, dotted, value, origin="the command's own settings")
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
    for key, prefix in (
        ("events.api_prefix", config.events.api_prefix),
        ("registry.api_prefix", config.registry.api_prefix),
    ):
        _check_api_prefix(key, prefix)
    _check_registry(config.registry)
    return config


def _check_api_prefix(key: str, prefix: str) -> None:
    if not is_subject(prefix):
        raise ConfigError(
            key,
            f"{prefix!r} is not a NATS subject of dot-separated tokens without wildcards "
            '(e.g. "$JS.API", or the prefix another account\'s JetStream API is imported under, "$JS.reg.API")',
        )


def _check_registry(registry: RegistryConfig) -> None:
    """An enabled registry trusts some key (each pinned key's checksum is checked where the registry is set up:
    a typo would trust nobody)."""
    if registry.enabled and not registry.trusted:
        raise ConfigError(
            "registry.trusted",
            'the registry is enabled but no publisher key is trusted: add [[registry.trusted]] key = "O..." '
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
