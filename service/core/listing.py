"""How an extension is listed by `discover` (`Available`), and the names close to one that is not there."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..contract.messages import Available, ExtensionType, VersionSource
from .version_info import VersionInfo
from .versions import Constraint, sort_newest_first


def close_names(name: str, names: Iterable[str]) -> list[str]:
    """Up to three names close to `name`. Names of very different length cannot be close: leaving them out
    first keeps this quick on a tree of thousands."""
    reach = max(3, len(name) // 2)
    return difflib.get_close_matches(name, [n for n in names if abs(len(n) - len(name)) <= reach], n=3, cutoff=0.6)


def to_available(extension_type: ExtensionType, name: str, versions: dict[str, VersionInfo]) -> Available | None:
    readable = sort_newest_first(v for v, info in versions.items() if info.metadata is not None)
    if not readable:
        return None
    good = [v for v in readable if versions[v].choosable]
    # Only pre-releases: none of them is latest (a load must name one), but each stays listed.
    latest = Constraint.parse(None).best(good)
    latest_meta = versions[latest].require_metadata() if latest is not None else None
    # Only where the registry has a part: a name whose versions are all on disk lists none (omitted from the
    # reply), so a large tree's discover stays the size it was.
    plain = all(versions[v].source == "disk" for v in readable)
    sources = (
        ()
        if plain
        else tuple(
            VersionSource(
                version=v,
                source=versions[v].source,
                yanked=versions[v].yanked,
                trusted=versions[v].untrusted is None,
            )
            for v in readable
        )
    )
    return Available(
        extension_type=extension_type, name=name, versions=tuple(good), latest=latest_meta, sources=sources
    )
