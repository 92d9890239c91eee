"""The names of the registry's two buckets, and of what JetStream keeps them in: each bucket is a stream
(`KV_<index>`, `OBJ_<archives>`), and an archive is a metadata message and chunk messages on subjects of its own.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class BucketNames:
    """The buckets that make the registry (the configuration may name others), and their streams."""

    index: str = "extension-index"
    archives: str = "extension-archives"

    @property
    def index_stream(self) -> str:
        return f"KV_{self.index}"

    @property
    def archive_stream(self) -> str:
        return f"OBJ_{self.archives}"

    def meta_subject(self, name: str) -> str:
        """Where the Object Store keeps the metadata of the object `name`."""
        return f"$O.{self.archives}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    def chunk_subject(self, nuid: str) -> str:
        """Where the Object Store keeps the chunks of the object whose metadata names `nuid`."""
        return f"$O.{self.archives}.C.{nuid}"


DEFAULT_NAMES: Final = BucketNames()
