"""What an extension depends on: dependency entries parsed, and a whole tree resolved to one version each.

A dependency entry is `name`, `name@constraint`, or either prefixed by a type (`provider:aws`); without a type
it means an extension of the same type, and failing that a taskserv. Resolution is depth first; each
extension gets the highest version that satisfies every constraint on it, and a missing dependency, an
unsatisfiable constraint or a cycle is a `DependencyError` that names the path to it. Reads the disk only
through the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..contract.errors import DependencyError, InvalidExtension, NotFound
from ..contract.messages import ExtensionType, MissingDependency
from .store import ExtensionStore
from .version_info import VersionInfo
from .versions import Constraint, sort_newest_first

_DEPENDENCY = re.compile(r"^(?:(?P<type>[A-Za-z]+):)?(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?:@(?P<constraint>.+))?$")


@dataclass(frozen=True, slots=True)
class Dependency:
    extension_type: ExtensionType
    name: str
    constraint: Constraint


@dataclass(slots=True)
class DependencyTree:
    """A resolved dependency graph: `order` is install order (dependencies first, the root last)."""

    root: VersionInfo
    order: list[VersionInfo] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)


def parse_dependency(store: ExtensionStore, owner: VersionInfo, entry: str) -> Dependency:
    match = _DEPENDENCY.match(entry.strip())
    if match is None:
        raise InvalidExtension(str(owner.path), [f"dependency entry {entry!r} is not name[@constraint]"])
    try:
        constraint = Constraint.parse(match["constraint"], field="dependencies")
    except Exception:
        raise InvalidExtension(
            str(owner.path),
            [f"dependency {entry!r}: {match['constraint']!r} is not a version constraint"],
        ) from None
    if match["type"]:
        try:  # exactly provider, taskserv or cluster, as the loader takes it
            dep_type = ExtensionType(match["type"])
        except ValueError:
            raise InvalidExtension(
                str(owner.path), [f"dependency {entry!r}: the type is provider, taskserv or cluster"]
            ) from None
    elif store.has(owner.extension_type, match["name"]):
        dep_type = owner.extension_type
    else:
        dep_type = ExtensionType.TASKSERV
    return Dependency(dep_type, match["name"], constraint)


def dependency_tree(store: ExtensionStore, root: VersionInfo) -> DependencyTree:
    """Resolves every dependency, depth first; each extension gets the highest version that satisfies
    every constraint on it. Raises DependencyError for a missing dependency, an unsatisfiable constraint
    or a cycle, naming the path that leads to it."""
    constraints: dict[tuple[ExtensionType, str], list[Constraint]] = {}
    for _ in range(8):  # each round may pick other versions, whose own dependencies differ
        tree = DependencyTree(root)
        seen_constraints: dict[tuple[ExtensionType, str], list[Constraint]] = {}
        _visit(store, root, (), tree, constraints, seen_constraints, set())
        if _same(seen_constraints, constraints):
            return tree
        constraints = seen_constraints
    return tree


def _visit(
    store: ExtensionStore,
    node: VersionInfo,
    path: tuple[str, ...],
    tree: DependencyTree,
    constraints: dict[tuple[ExtensionType, str], list[Constraint]],
    seen: dict[tuple[ExtensionType, str], list[Constraint]],
    done: set[str],
) -> None:
    label = f"{node.extension_type.value}:{node.name}"
    here = (*path, label)
    metadata = node.require_metadata()
    for entry in metadata.dependencies:
        dep = parse_dependency(store, node, entry)
        dep_label = f"{dep.extension_type.value}:{dep.name}"
        if dep_label in here:
            cycle = [*here[here.index(dep_label) :], dep_label]
            raise DependencyError(_subject(tree.root), cycle=cycle, path=[*here, dep_label])
        key = (dep.extension_type, dep.name)
        seen.setdefault(key, []).append(dep.constraint)
        try:
            versions = store.versions(dep.extension_type, dep.name)
        except NotFound:
            missing = MissingDependency(dependency=dep_label, constraint=_joined([dep.constraint]), available=())
            raise DependencyError(_subject(tree.root), missing=[missing], path=[*here, dep_label]) from None
        wanted = [dep.constraint, *constraints.get(key, [])]
        chosen = _best_for_all(wanted, versions)
        if chosen is None:
            missing = MissingDependency(
                dependency=dep_label, constraint=_joined(wanted), available=tuple(sort_newest_first(versions))
            )
            raise DependencyError(_subject(tree.root), missing=[missing], path=[*here, dep_label])
        info = versions[chosen]
        tree.edges.append((node.key, info.key))
        if info.key not in done:
            _visit(store, info, here, tree, constraints, seen, done)
            done.add(info.key)
            tree.order.append(info)
    if not path:
        tree.order.append(node)
        tree.edges[:] = list(dict.fromkeys(tree.edges))


def _subject(info: VersionInfo) -> str:
    return f"{info.extension_type.value} {info.name} {info.version}"


def _joined(constraints: Iterable[Constraint]) -> str | None:
    """The constraints that must all hold, as one: declared texts joined with ',' (the constraint syntax's "and"),
    each once, "latest" left out; None when nothing constrains the version."""
    texts = dict.fromkeys(c.text for c in constraints if c.spec is not None)
    return ",".join(texts) or None


def _best_for_all(constraints: Iterable[Constraint], versions: dict[str, VersionInfo]) -> str | None:
    """The highest version every constraint allows; a yanked or untrusted registry version only where a
    constraint names it exactly (as a pinned load takes it), or where it blocks (its signed state lists it: then
    its refusal, never an older version)."""
    wanted = list(constraints)
    pinned = {c.text for c in wanted}
    for version in sort_newest_first(versions):
        info = versions[version]
        if (info.choosable or info.blocks or version in pinned) and all(c.matches(version) for c in wanted):
            return version
    return None


def _same(
    a: dict[tuple[ExtensionType, str], list[Constraint]], b: dict[tuple[ExtensionType, str], list[Constraint]]
) -> bool:
    return {k: sorted(c.text for c in v) for k, v in a.items()} == {k: sorted(c.text for c in v) for k, v in b.items()}
