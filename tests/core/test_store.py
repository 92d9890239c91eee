"""The store: layouts, root order, broken neighbours, dependency trees, and refreshing on change."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from service.contract.errors import DependencyError, InvalidExtension, NotFound, VersionNotFound
from service.contract.messages import ExtensionType, MissingDependency
from service.core.dependencies import dependency_tree
from service.core.store import ExtensionStore
from service.core.versions import Constraint
from tests.conftest import EXAMPLES, write_extension

T = ExtensionType.TASKSERV


def test_example_tree() -> None:
    store = ExtensionStore([EXAMPLES])
    assert sorted(store.versions(T, "kubernetes")) == ["1.28.0", "1.29.2", "1.30.0-rc.1"]
    assert list(store.versions(T, "containerd")) == ["1.7.13"]
    names = {(a.extension_type.value, a.name) for a in store.available()}
    assert len(names) == 12
    for available in store.available():
        assert available.latest is not None  # every example has a stable version
        info = store.versions(available.extension_type, available.name)[available.latest.version]
        tree = dependency_tree(store, info)  # every example's dependencies resolve, without cycles
        assert tree.order[-1] == info


def test_first_root_wins_and_broken_neighbours_are_skipped(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_extension(first, "taskserv", "etcd", "9.0.0")
    write_extension(second, "taskserv", "etcd", "3.5.0")
    write_extension(second, "taskserv", "redis", "7.0.0")
    write_extension(second, "taskserv", "broken", "1.0.0", metadata="not toml at all [")
    write_extension(second, "taskserv", "Bad_Name", "1.0.0")
    store = ExtensionStore([first, second])
    assert list(store.versions(T, "etcd")) == ["9.0.0"]
    assert [a.name for a in store.available(T)] == ["etcd", "redis"]
    with pytest.raises(InvalidExtension):
        store.available(T, "broken")
    with pytest.raises(NotFound) as info:
        store.versions(T, "etc")
    assert info.value.suggestions == ["etcd"]


def test_symlinked_folders_are_refused_and_shadow_nothing(tmp_path: Path) -> None:
    """A symlinked extension or version folder could lead out of the root: like the loader, the store refuses
    it (invalid_extension), and it still claims its name, so a later root's folder of that name is not used."""
    first, later = tmp_path / "first", tmp_path / "later"
    outside = write_extension(tmp_path / "outside", "taskserv", "secret", None)
    write_extension(later, "taskserv", "secret", None)
    (first / "taskservs").mkdir(parents=True)
    (first / "taskservs" / "secret").symlink_to(outside)
    store = ExtensionStore([first, later])
    with pytest.raises(InvalidExtension) as info:
        store.resolve(T, "secret", Constraint.parse(None))
    assert info.value.problems == ["symlink not allowed: ."]
    assert [a.name for a in store.available(T)] == []

    root = tmp_path / "versions"
    write_extension(root, "taskserv", "app", "1.0.0")
    (root / "taskservs" / "app" / "2.0.0").symlink_to(outside)
    store = ExtensionStore([root])
    with pytest.raises(InvalidExtension):
        store.resolve(T, "app", Constraint.parse("2.0.0")).require_metadata()
    assert store.resolve(T, "app", Constraint.parse("^1")).version == "1.0.0"


def test_dependency_types_are_written_singular(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_extension(root, "taskserv", "etcd", "3.5.0")
    write_extension(root, "cluster", "plural", "1.0.0", dependencies=["taskservs:etcd"])
    store = ExtensionStore([root])
    with pytest.raises(InvalidExtension) as info:
        dependency_tree(store, store.resolve(ExtensionType.CLUSTER, "plural", Constraint.parse(None)))
    assert "provider, taskserv or cluster" in info.value.problems[0]


def test_changes_on_disk_are_seen(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_extension(root, "taskserv", "app", "1.0.0")
    store = ExtensionStore([root])
    assert store.resolve(T, "app", Constraint.parse(None)).version == "1.0.0"
    write_extension(root, "taskserv", "app", "1.1.0")
    assert store.resolve(T, "app", Constraint.parse(None)).version == "1.1.0"
    write_extension(root, "taskserv", "newcomer", "0.1.0")
    assert "newcomer" in store.names(T)
    with pytest.raises(VersionNotFound) as info:
        store.resolve(T, "app", Constraint.parse("^2"))
    assert info.value.available == ["1.1.0", "1.0.0"]


def test_dependency_resolution_satisfies_every_constraint(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_extension(root, "taskserv", "lib", "1.0.0")
    write_extension(root, "taskserv", "lib", "1.5.0")
    write_extension(root, "taskserv", "lib", "2.0.0")
    write_extension(root, "taskserv", "a", "1.0.0", dependencies=["lib@^1"])
    write_extension(root, "taskserv", "b", "1.0.0", dependencies=["lib@<1.5"])
    write_extension(root, "cluster", "top", "1.0.0", dependencies=["taskserv:a", "taskserv:b"])
    store = ExtensionStore([root])
    top = store.resolve(ExtensionType.CLUSTER, "top", Constraint.parse(None))
    tree = dependency_tree(store, top)
    order = [n.key for n in tree.order]
    assert order == ["taskserv:lib:1.0.0", "taskserv:a:1.0.0", "taskserv:b:1.0.0", "cluster:top:1.0.0"]


def test_unsatisfiable_and_cyclic_dependencies(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_extension(root, "taskserv", "lib", "1.0.0")
    write_extension(root, "taskserv", "a", "1.0.0", dependencies=["lib@^1"])
    write_extension(root, "taskserv", "b", "1.0.0", dependencies=["lib@^2"])
    write_extension(root, "taskserv", "x", "1.0.0", dependencies=["y"])
    write_extension(root, "taskserv", "y", "1.0.0", dependencies=["z"])
    write_extension(root, "taskserv", "z", "1.0.0", dependencies=["x"])
    store = ExtensionStore([root])
    with pytest.raises(DependencyError) as info:
        dependency_tree(store, store.resolve(T, "b", Constraint.parse(None)))
    assert info.value.missing == [MissingDependency(dependency="taskserv:lib", constraint="^2", available=("1.0.0",))]
    with pytest.raises(DependencyError) as info:
        dependency_tree(store, store.resolve(T, "x", Constraint.parse(None)))
    assert info.value.cycle == ["taskserv:x", "taskserv:y", "taskserv:z", "taskserv:x"]


def test_a_missing_dependency_names_what_no_version_meets(tmp_path: Path) -> None:
    """Each constraint alone is met (`^1` by 1.0.0, `^2` by 2.0.0), both together by nothing: the error says
    so, rather than report `^1` beside an available 1.0.0. A dependency that is not there has no versions."""
    root = tmp_path / "root"
    write_extension(root, "taskserv", "lib", "1.0.0")
    write_extension(root, "taskserv", "lib", "2.0.0")
    write_extension(root, "taskserv", "a", "1.0.0", dependencies=["lib@^1"])
    write_extension(root, "taskserv", "b", "1.0.0", dependencies=["lib@^2"])
    write_extension(root, "cluster", "top", "1.0.0", dependencies=["taskserv:a", "taskserv:b"])
    write_extension(root, "cluster", "lonely", "1.0.0", dependencies=["provider:nowhere@~1.2"])
    store = ExtensionStore([root])
    with pytest.raises(DependencyError) as info:
        dependency_tree(store, store.resolve(ExtensionType.CLUSTER, "top", Constraint.parse(None)))
    (missing,) = info.value.missing
    assert missing == MissingDependency(dependency="taskserv:lib", constraint="^1,^2", available=("2.0.0", "1.0.0"))
    assert not [v for v in missing.available if Constraint.parse(missing.constraint).matches(v)]
    with pytest.raises(DependencyError) as info:
        dependency_tree(store, store.resolve(ExtensionType.CLUSTER, "lonely", Constraint.parse(None)))
    assert info.value.missing == [MissingDependency(dependency="provider:nowhere", constraint="~1.2", available=())]


def test_an_unchanged_tree_lists_the_very_same_tuple(tmp_path: Path) -> None:
    """discover's listing is kept while nothing in it changes (its reply is then encoded once); a version or a
    name that comes or goes makes a new one, seen by the folders' times without a watcher."""
    root = tmp_path / "root"
    write_extension(root, "taskserv", "app", "1.0.0")
    write_extension(root, "taskserv", "db", "2.0.0")
    write_extension(root, "provider", "cloud", "1.0.0")
    store = ExtensionStore([root])
    everything, taskservs = store.available(), store.available(T)
    assert [a.name for a in everything] == ["cloud", "app", "db"]
    assert store.available() is everything and store.available(T) is taskservs
    store.resolve(T, "app", Constraint.parse(None))  # a load reads one extension: nothing changed
    assert store.available() is everything

    write_extension(root, "taskserv", "app", "1.1.0")
    changed = store.available(T)
    assert changed is not taskservs and changed[0].versions == ("1.1.0", "1.0.0")
    write_extension(root, "taskserv", "cache", "0.1.0")
    assert [a.name for a in store.available(T)] == ["app", "cache", "db"]
    shutil.rmtree(root / "taskservs" / "app" / "1.1.0")
    assert store.available(T)[0].versions == ("1.0.0",)
    assert [a.name for a in store.available()] == ["cloud", "app", "cache", "db"]


def test_a_metadata_file_edited_in_place_is_listed_once_read_again(tmp_path: Path) -> None:
    """Without a watcher the listing looks at folder times only, which an edit inside a file leaves alone; a load
    (or status, or graph) of that extension reads it again, and the listing follows. With a watcher, the watch
    says what changed."""
    root = tmp_path / "root"
    folder = write_extension(root, "taskserv", "app", "1.0.0")
    store = ExtensionStore([root])
    before = store.available(T)
    metadata = folder / "metadata.toml"
    metadata.write_text(metadata.read_text().replace("test extension app", "edited in place"))
    later = os.stat(metadata).st_mtime_ns + 5_000_000_000  # a time no coarse clock tick could share
    os.utime(metadata, ns=(later, later))
    store.resolve(T, "app", Constraint.parse(None))
    after = store.available(T)
    assert after is not before
    assert after[0].latest is not None and after[0].latest.description == "edited in place"

    store.watched = True
    metadata.write_text(metadata.read_text().replace("edited in place", "seen by the watch"))
    store.invalidate(T, "app")
    (listed,) = store.available(T)
    assert listed.latest is not None and listed.latest.description == "seen by the watch"


def test_a_change_within_the_same_clock_tick_as_the_last_read_is_seen(tmp_path: Path) -> None:
    """A file system whose clock ticks coarsely can give a folder the same time for a change made just after a
    read: a folder time that recent is not trusted alone (here the change keeps the folder's time exactly)."""
    root = tmp_path / "root"
    write_extension(root, "taskserv", "app", "1.0.0")
    name_folder = root / "taskservs" / "app"
    tick = time.time_ns() + 5_000_000_000  # recent (here: ahead) as a read can be
    os.utime(name_folder, ns=(tick, tick))
    store = ExtensionStore([root])
    assert store.available(T)[0].versions == ("1.0.0",)
    write_extension(root, "taskserv", "app", "1.1.0")
    os.utime(name_folder, ns=(tick, tick))
    assert store.available(T)[0].versions == ("1.1.0", "1.0.0")


def test_discovering_a_folder_with_no_version_is_not_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_extension(root, "taskserv", "emptier", "1.0.0")
    (root / "taskservs" / "empty").mkdir()
    store = ExtensionStore([root])
    assert [a.name for a in store.available(T)] == ["emptier"]
    with pytest.raises(NotFound) as info:
        store.available(T, "empty")
    assert info.value.suggestions == ["emptier"]
