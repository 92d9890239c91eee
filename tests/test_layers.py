"""The layout's rules, read from the code's own imports (ast, nothing is imported):

- imports run one way: app -> wire -> core -> runtime and registry (side by side, neither importing the
  other), with contract and the `notify` module below them all; a module may import its
  own layer and those below it, never one above;
- no import cycle between modules, whether the import runs at start or only for type checking;
- every module opens with a docstring saying what it is for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "service"
# Higher may import lower. The package's own __init__ and __main__ are the public surface, above everything.
RANK = {"notify": 0, "contract": 0, "runtime": 1, "registry": 1, "core": 2, "wire": 3, "app": 4}
SURFACE = 5


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 and parts[1] in RANK else SURFACE


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module of the service, line) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "service":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "service":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {t for t, _ in imports(m, p, known) if t in known and t != m} for m, p in mods.items()}


def test_the_layers_are_the_packages() -> None:
    """Every layer is a package but `notify`, one module below them all: how a task waits for a state to change."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert packages | loose == set(RANK)


def test_no_layer_imports_one_above_it() -> None:
    mods = modules()
    known = set(mods)
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({_name(layer(module))}) imports {target} "
        f"({_name(layer(target))})"
        for module, path in mods.items()
        for target, line in imports(module, path, known)
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_layers_side_by_side_do_not_import_each_other() -> None:
    """runtime and registry share a rank: the core uses both, and neither knows of the other."""
    mods = modules()
    known = set(mods)
    sideways = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}"
        for module, path in mods.items()
        for target, line in imports(module, path, known)
        if layer(target) == layer(module) < SURFACE and _package(target) != _package(module)
    ]
    assert sideways == []


def test_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_says_what_it_is_for(module: str) -> None:
    path = modules()[module]
    if path.name == "__main__.py":
        return
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 5, f"{path} has no docstring that says what it is for"


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a runtime module that imports the wire is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""A runtime module reaching up."""\nfrom ..wire.service import ExtensionService\n')
    found = list(imports("service.runtime.bad", bad, {"service.wire.service"}))
    assert found == [("service.wire.service", 2)]
    assert layer(found[0][0]) > layer("service.runtime.bad")


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _name(rank: int) -> str:
    return next((k for k, v in RANK.items() if v == rank), "public surface")
