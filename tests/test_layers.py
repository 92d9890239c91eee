"""The layout's rules, read from the code's own imports (ast, nothing is imported):

- imports run one way: app -> wire -> core -> runtime and registry (side by side, neither importing the
  other), with contract and the `notify` module below them all; a module may import its
  own layer and those below it, never one above;
- no import cycle between modules, whether the import runs at start or only for type checking;
- every module opens with a docstring saying what it is for, and reads in one sitting (at most 350 lines);
- the benchmark (`bench/`) stands on the service: it may import the service's public parts (no module or name
  that starts with `_`), nothing in the service imports it, and its own modules form no cycle either (an import
  read late, inside a function, counts as much as one at the top).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "service"
BENCH = ROOT / "bench"
PROJECT = {"service", "bench"}  # the packages whose imports are read
# Higher may import lower. The package's own __init__ and __main__ are the public surface, above everything.
RANK = {"notify": 0, "contract": 0, "runtime": 1, "registry": 1, "core": 2, "wire": 3, "app": 4}
SURFACE = 5


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(package.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 and parts[1] in RANK else SURFACE


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module of the service or the benchmark, line) for every import in the file, relative ones
    resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT:
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
            if target.split(".")[0] not in PROJECT:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports among `mods`."""
    known = set(mods)
    return {m: {t for t, _ in imports(m, p, known) if t in known and t != m} for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of `edges` meets, each as the path that closes it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def service_names(path: Path) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything the file imports from the service: a module, or a name in one."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "service")
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "service":
            yield from ((f"{node.module}.{a.name}", node.lineno) for a in node.names)


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
    assert cycles(graph(modules())) == []


def test_the_service_does_not_import_the_benchmark() -> None:
    mods = modules()
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
        for module, path in mods.items()
        for target, line in imports(module, path, set(mods))
        if target.split(".")[0] == "bench"
    ]
    assert found == []


def test_the_benchmark_imports_only_the_public_parts_of_the_service() -> None:
    private = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in modules(BENCH).values()
        for name, line in service_names(path)
        if any(part.startswith("_") for part in name.split("."))
    ]
    assert private == []


def test_no_import_cycle_in_the_benchmark() -> None:
    assert cycles(graph(modules(BENCH))) == []


@pytest.mark.parametrize("module", sorted({**modules(), **modules(BENCH)}))
def test_every_module_says_what_it_is_for(module: str) -> None:
    path = {**modules(), **modules(BENCH)}[module]
    if path.name == "__main__.py":
        return
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.split()) >= 5, f"{path} has no docstring that says what it is for"


MAX_LINES = 350


def test_every_module_reads_in_one_sitting() -> None:
    """A module over this holds more than one idea, as a rule: split it by responsibility."""
    paths = [*modules().values(), *modules(BENCH).values()]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a runtime module that imports the wire is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""A runtime module reaching up."""\nfrom ..wire.service import ExtensionService\n')
    found = list(imports("service.runtime.bad", bad, {"service.wire.service"}))
    assert found == [("service.wire.service", 2)]
    assert layer(found[0][0]) > layer("service.runtime.bad")


def test_the_rules_catch_a_cycle_through_a_late_import(tmp_path: Path) -> None:
    """The checker itself: two benchmark modules that import each other, one of them only inside a function,
    form a cycle; and a private name of the service is one the benchmark may not import."""
    (tmp_path / "first.py").write_text('"""One half."""\nfrom . import second\n')
    (tmp_path / "second.py").write_text(
        '"""The other half."""\nfrom service.core._private import thing\n\n\n'
        "def later() -> None:\n    from .first import something\n"
    )
    mods = {"bench.first": tmp_path / "first.py", "bench.second": tmp_path / "second.py"}
    assert graph(mods) == {"bench.first": {"bench.second"}, "bench.second": {"bench.first"}}
    assert cycles(graph(mods)) == [["bench.first", "bench.second", "bench.first"]]
    assert list(service_names(mods["bench.second"])) == [("service.core._private.thing", 2)]


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _name(rank: int) -> str:
    return next((k for k, v in RANK.items() if v == rank), "public surface")
