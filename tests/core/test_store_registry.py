"""The store with a registry's versions merged in: which wins, what a constraint may choose (never a yanked or
untrusted version), what an exact pin gets, what discover lists, and how dependencies resolve across both.

The registry's side here is a plain `RegistryView` of VersionInfo values: what the core's `Releases` gives the
store, without JetStream (the registry tests run that part against a real server)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from service.contract.errors import NotFound, UntrustedExtension, VersionNotFound
from service.contract.messages import ExtensionMetadata, ExtensionType, VersionSource
from service.core.dependencies import dependency_tree
from service.core.store import ExtensionStore
from service.core.version_info import VersionInfo
from service.core.versions import Constraint
from tests.conftest import write_extension

T = ExtensionType.TASKSERV
LATEST = Constraint.parse(None)


class View:
    def __init__(self) -> None:
        self.infos: dict[tuple[ExtensionType, str], dict[str, VersionInfo]] = {}
        self.change_count = 0

    def add(
        self,
        name: str,
        version: str,
        *,
        yanked: bool = False,
        untrusted: str | None = None,
        dependencies: tuple[str, ...] = (),
    ) -> VersionInfo:
        meta = ExtensionMetadata(
            name=name,
            version=version,
            description=f"{name} from the registry",
            extension_type=T,
            dependencies=dependencies,
        )
        info = VersionInfo(
            T,
            name,
            version,
            Path("/registry") / name / version,
            meta,
            source="registry",
            yanked=yanked,
            untrusted=untrusted,
            signer="U" + "A" * 55,
        )
        self.infos.setdefault((T, name), {})[version] = info
        self.change_count += 1
        return info

    def names(self, extension_type: ExtensionType) -> Collection[str]:
        return {n for t, n in self.infos if t is extension_type}

    def versions(self, extension_type: ExtensionType, name: str) -> dict[str, VersionInfo]:
        return self.infos.get((extension_type, name), {})


@pytest.fixture
def roots(tmp_path: Path) -> list[Path]:
    write_extension(tmp_path, "taskserv", "etcd", "3.5.0")
    write_extension(tmp_path, "taskserv", "etcd", "3.6.0")
    return [tmp_path]


def test_a_name_s_versions_are_the_disk_s_and_the_registry_s_and_the_disk_wins_a_tie(roots: list[Path]) -> None:
    view = View()
    view.add("etcd", "3.6.0")
    view.add("etcd", "3.7.0")
    store = ExtensionStore(roots, releases=view)
    versions = store.versions(T, "etcd")
    assert sorted(versions) == ["3.5.0", "3.6.0", "3.7.0"]
    assert versions["3.6.0"].source == "disk" and versions["3.7.0"].source == "registry"
    assert store.resolve(T, "etcd", LATEST).version == "3.7.0"
    assert store.has(T, "etcd") and not store.has(T, "nothing")


def test_a_name_only_in_the_registry_is_found_and_suggested(roots: list[Path]) -> None:
    view = View()
    view.add("kubernetes", "1.30.0")
    store = ExtensionStore(roots, releases=view)
    assert store.resolve(T, "kubernetes", LATEST).source == "registry"
    with pytest.raises(NotFound) as caught:
        store.versions(T, "kubernetez")
    assert caught.value.suggestions == ["kubernetes"]


def test_a_yanked_version_is_never_chosen_by_a_constraint_but_loads_when_pinned(roots: list[Path]) -> None:
    view = View()
    view.add("etcd", "3.7.0", yanked=True)
    store = ExtensionStore(roots, releases=view)
    assert store.resolve(T, "etcd", LATEST).version == "3.6.0"
    with pytest.raises(VersionNotFound) as caught:
        store.resolve(T, "etcd", Constraint.parse("^3.7"))
    assert "3.7.0" not in caught.value.available
    pinned = store.resolve(T, "etcd", Constraint.parse("3.7.0"))
    assert pinned.version == "3.7.0" and pinned.yanked


def test_an_untrusted_version_is_not_chosen_and_a_pin_of_it_is_refused(roots: list[Path]) -> None:
    view = View()
    view.add("etcd", "3.8.0", untrusted="its signature does not verify")
    view.add("vault", "1.0.0", untrusted="its signer is not trusted")
    store = ExtensionStore(roots, releases=view)
    assert store.resolve(T, "etcd", LATEST).version == "3.6.0"
    for name, constraint in (("etcd", "3.8.0"), ("vault", None)):
        info = store.resolve(T, name, Constraint.parse(constraint))
        with pytest.raises(UntrustedExtension) as caught:
            info.require_trusted()
        assert caught.value.details()["signer"] == "U" + "A" * 55
        assert caught.value.status == 403


def test_discover_lists_every_version_with_where_it_comes_from(roots: list[Path]) -> None:
    view = View()
    view.add("etcd", "3.7.0", yanked=True)
    view.add("etcd", "3.8.0", untrusted="not trusted")
    view.add("vault", "1.0.0")
    store = ExtensionStore(roots, releases=view)
    (etcd,) = store.available(T, "etcd")
    assert etcd.versions == ("3.6.0", "3.5.0")
    assert etcd.latest is not None and etcd.latest.version == "3.6.0"
    assert etcd.sources == (
        VersionSource(version="3.8.0", source="registry", trusted=False),
        VersionSource(version="3.7.0", source="registry", yanked=True),
        VersionSource(version="3.6.0", source="disk"),
        VersionSource(version="3.5.0", source="disk"),
    )
    listing = {a.name: a for a in store.available(T)}
    assert set(listing) == {"etcd", "vault"}
    assert listing["vault"].sources == (VersionSource(version="1.0.0", source="registry"),)
    assert listing["etcd"] == etcd


def test_the_listing_follows_the_registry_s_changes(roots: list[Path]) -> None:
    view = View()
    store = ExtensionStore(roots, releases=view)
    before = store.available(T)
    assert store.available(T) is before  # nothing changed: the very same listing
    view.add("vault", "1.0.0")
    after = store.available(T)
    assert [a.name for a in after] == ["etcd", "vault"]


def test_dependencies_resolve_across_disk_and_registry_and_skip_yanked_versions(tmp_path: Path) -> None:
    write_extension(tmp_path, "taskserv", "kubernetes", "1.30.0", dependencies=["etcd@^3", "containerd"])
    view = View()
    view.add("etcd", "3.5.0")
    view.add("etcd", "3.6.0", yanked=True)
    view.add("containerd", "1.7.0")
    store = ExtensionStore([tmp_path], releases=view)
    root = store.resolve(T, "kubernetes", LATEST)
    order = [info.key for info in dependency_tree(store, root).order]
    assert order == ["taskserv:etcd:3.5.0", "taskserv:containerd:1.7.0", "taskserv:kubernetes:1.30.0"]
