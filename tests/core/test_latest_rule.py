"""One rule for "latest" on every surface: the highest stable semantic version; a pre-release only when the
request asks for one (its exact version, or a constraint that names a pre-release).

One table of situations and requests runs through the service over real NATS (load, graph, discover's
`latest`, auto_load) and through the Nushell loader as a person runs it (`module load`, `module discover`);
every surface must give the table's answer, so they all give the same one. The loader takes an exact version
or `latest`: constraints are the service's to resolve (it always hands the loader the exact version it chose),
so the loader refuses a constraint as `invalid_request`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.app.serve import auto_load
from service.contract.config import Config
from service.core.versions import parse_version, sort_newest_first
from service.runtime.runner import MODULE
from service.wire.service import ExtensionService
from tests.conftest import NU, ROOT, WAIT, make_config, write_extension

pytestmark = pytest.mark.anyio


NOT_FOUND = "version_not_found"


@dataclass(frozen=True)
class Situation:
    versions: tuple[str, ...]
    latest: str | None  # what "latest" means here: None when nothing stable is on disk
    single: bool = False  # the one-version layout (no version folder)


# Each taskserv of the tree is one situation.
TREE = {
    "only-pre": Situation(("1.0.0-rc.1",), None),
    "only-pre-single": Situation(("1.0.0-rc.1",), None, single=True),
    "only-pres": Situation(("1.9.0-rc.3", "2.0.0-beta.2", "2.0.0-rc.1"), None),
    "pre-newer": Situation(("1.0.0", "1.1.0-rc.1"), "1.0.0"),
    "stables": Situation(("1.0.0", "1.2.0", "1.10.0"), "1.10.0"),
}

# (extension, requested version, the version loaded or the error code). No version and "latest" are the
# same request, answered by the situation's `latest`.
ROWS: list[tuple[str, str | None, str]] = [
    *((name, asked, s.latest or NOT_FOUND) for name, s in TREE.items() for asked in (None, "latest")),
    ("only-pre", "1.0.0-rc.1", "1.0.0-rc.1"),
    ("only-pre", ">=1.0.0-rc.1", "1.0.0-rc.1"),
    ("only-pre", "^1", NOT_FOUND),
    ("only-pre-single", "1.0.0-rc.1", "1.0.0-rc.1"),
    ("only-pre-single", ">=1.0.0-rc.1", "1.0.0-rc.1"),
    ("only-pres", "2.0.0-beta.2", "2.0.0-beta.2"),
    ("only-pres", ">=2.0.0-alpha", "2.0.0-rc.1"),
    ("pre-newer", "1.1.0-rc.1", "1.1.0-rc.1"),
    ("pre-newer", ">=1.0.0-rc.1", "1.1.0-rc.1"),
    ("pre-newer", "^1", "1.0.0"),
    ("stables", "1.2.0", "1.2.0"),
    ("stables", "^1", "1.10.0"),
]


def build_tree(root: Path) -> Path:
    for name, situation in TREE.items():
        for version in situation.versions:
            if situation.single:
                metadata = f'name = "{name}"\nversion = "{version}"\ndescription = "{name}"\ntype = "taskserv"\n'
                write_extension(root, "taskserv", name, None, metadata=metadata)
            else:
                write_extension(root, "taskserv", name, version)
    return root


def report(mismatches: list[str]) -> str:
    return "these answers break the rule:\n  " + "\n  ".join(mismatches)


# --- the service, over NATS ---------------------------------------------------------------------------------


@pytest.fixture
def config(nats_server: NatsServer, tmp_path: Path) -> Config:
    return make_config(nats_server.url, tmp_path, roots=[build_tree(tmp_path / "ext")])


async def answer(call: Any) -> Any:
    try:
        return await call
    except RemoteError as exc:
        return exc.code


async def test_load(client: LoaderClient) -> None:
    mismatches = []
    for name, asked, expected in ROWS:
        got = await answer(client.load("taskserv", name, asked))
        version = got if isinstance(got, str) else got["metadata"]["version"]
        if version != expected:
            mismatches.append(f"load {name} {asked!r}: expected {expected}, got {version}")
    assert not mismatches, report(mismatches)


async def test_graph(client: LoaderClient) -> None:
    mismatches = []
    for name, asked, expected in ROWS:
        got = await answer(client.graph("taskserv", name, asked))
        root = got if isinstance(got, str) else got["order"][-1].rsplit(":", 1)[1]
        if root != expected:
            mismatches.append(f"graph {name} {asked!r}: expected {expected}, got {root}")
    assert not mismatches, report(mismatches)


async def test_discover(client: LoaderClient) -> None:
    mismatches = []
    for name, situation in TREE.items():
        (found,) = await client.discover("taskserv", name)
        # Every version stays discoverable (a pre-release can be asked for exactly); only `latest` follows the rule.
        assert found["versions"] == sort_newest_first(situation.versions)
        latest = found["latest"]["version"] if found["latest"] is not None else None
        if latest != situation.latest:
            mismatches.append(f"discover {name}: expected latest {situation.latest}, got {latest}")
    assert not mismatches, report(mismatches)


async def test_cli_discover_shows_an_extension_without_latest(nats_server: NatsServer, client: LoaderClient) -> None:
    cli = Path(sys.executable).with_name("extension-loader")
    with anyio.fail_after(WAIT):
        done = await anyio.run_process([cli, "discover", "taskserv", "--server", nats_server.url], check=False)
    rows = {line.split()[1]: line for line in done.stdout.decode().splitlines()[1:]}
    assert done.returncode == 0, done.stderr.decode()
    assert "pre-releases only" in rows["only-pre"] and "1.0.0-rc.1" in rows["only-pre"]
    assert "pre-releases only" not in rows["pre-newer"]


async def test_auto_load(client: LoaderClient, service: ExtensionService, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.app"):
        await auto_load(service)
    loaded = {e["metadata"]["name"]: e["metadata"]["version"] for e in await client.list("taskserv")}
    mismatches = [
        f"auto_load {name}: expected {s.latest or 'to be skipped'}, got {loaded.get(name) or 'skipped'}"
        for name, s in TREE.items()
        if loaded.get(name) != s.latest
    ]
    assert not mismatches, report(mismatches)
    for name, situation in TREE.items():
        if situation.latest is None:  # skipped, and the log says so and why
            assert any(name in r.getMessage() and "no stable version" in r.getMessage() for r in caplog.records)


# --- the Nushell loader, as a person runs it ----------------------------------------------------------------


@dataclass(frozen=True)
class Loader:
    root: Path
    cache: Path
    home: Path

    def run(self, *args: str) -> Any:
        """The JSON the loader printed: its result (exit 0) or its error (exit 3)."""
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PROVISIONING_EXTENSION_PATHS": str(self.root),
            "PROVISIONING_EXTENSION_CACHE": str(self.cache),
        }
        argv = [str(NU), "-n", str(MODULE), "module", *args, "--output", "json"]
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode in (0, 3), f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)


@pytest.fixture
def loader(tmp_path: Path) -> Loader:
    (tmp_path / "home").mkdir()
    return Loader(build_tree(tmp_path / "ext"), tmp_path / "cache", tmp_path / "home")


def test_nushell_load(loader: Loader) -> None:
    mismatches = []
    for name, asked, expected in ROWS:
        if asked is not None and asked != "latest" and parse_version(asked) is None:
            expected = "invalid_request"  # a constraint: the service resolves it before it runs the loader
        got = loader.run("load", "taskserv", name, *(["--version", asked] if asked is not None else []))
        version = got["error"]["code"] if "error" in got else got["metadata"]["version"]
        if version != expected:
            mismatches.append(f"nu module load {name} {asked!r}: expected {expected}, got {version}")
    assert not mismatches, report(mismatches)


def test_nushell_discover(loader: Loader) -> None:
    found = {a["name"]: a for a in loader.run("discover", "taskserv")}
    mismatches = []
    for name, situation in TREE.items():
        assert found[name]["versions"] == sort_newest_first(situation.versions)
        latest = found[name]["latest"]["version"] if found[name]["latest"] is not None else None
        if latest != situation.latest:
            mismatches.append(f"nu module discover {name}: expected latest {situation.latest}, got {latest}")
    assert not mismatches, report(mismatches)
