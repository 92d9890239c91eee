"""One version of one extension as the store knows it (`VersionInfo`), and the key it is cached under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract.errors import InvalidExtension, UntrustedExtension
from ..contract.messages import ExtensionMetadata, ExtensionType, Source


def cache_key(extension_type: ExtensionType, name: str, version: str) -> str:
    """`{type}:{name}:{version}`: the key of the cache, and the id of a graph node."""
    return ":".join((extension_type, name, version))  # a StrEnum is its value; join is the cheapest spelling


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of one extension, on disk or in the registry; `metadata` is None where the file is broken.

    A registry version's `path` is where it is unpacked once fetched; it is `yanked` as its publisher said, and
    `untrusted` (the reason) when this instance does not trust its signer or signature. Only a version that is
    neither is `choosable` by a constraint; an exact pin still loads a yanked one. An untrusted version that its
    extension's signed state lists `blocks`: a constraint whose best version it is gets it (and its refusal), not an
    older one."""

    extension_type: ExtensionType
    name: str
    version: str
    path: Path
    metadata: ExtensionMetadata | None
    problems: tuple[str, ...] = ()
    source: Source = "disk"
    yanked: bool = False
    untrusted: str | None = None
    signer: str | None = None
    blocks: bool = False

    @property
    def key(self) -> str:
        return cache_key(self.extension_type, self.name, self.version)

    @property
    def choosable(self) -> bool:
        return not self.yanked and self.untrusted is None

    def require_metadata(self) -> ExtensionMetadata:
        if self.metadata is None:
            self.require_trusted()  # a registry version without metadata to read: its refusal says why
            raise InvalidExtension(str(self.path), self.problems)
        return self.metadata

    def require_trusted(self) -> None:
        if self.untrusted is not None:
            raise UntrustedExtension(
                self.extension_type.value, self.name, self.version, self.untrusted, signer=self.signer
            )
