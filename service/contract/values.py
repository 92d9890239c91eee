"""The values inside the wire messages: extension types, names, version specs and timestamps, and the patterns
that check them (`schemas/` publishes the patterns as they are).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

from msgspec import Meta

__all__ = [
    "NAME_PATTERN",
    "TYPE_PATTERN",
    "VERSION_PATTERN",
    "ExtensionType",
    "Name",
    "Timestamp",
    "TypeName",
    "VersionSpec",
]


class ExtensionType(enum.StrEnum):
    PROVIDER = "provider"
    TASKSERV = "taskserv"
    CLUSTER = "cluster"

    @property
    def folder(self) -> str:
        """The folder of an extension root that holds extensions of this type."""
        return f"{self.value}s"

    @classmethod
    def parse(cls, text: str) -> ExtensionType:
        """Accepts `taskserv`, `Taskservs`, `TASKSERV`: any case, singular or plural."""
        word = text.strip().lower()
        if word.endswith("s"):
            word = word[:-1]
        return cls(word)


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


# No lookaround, so the pattern means the same in Python, ECMA-262 (JSON Schema) and Rust's regex crate:
# each dot is followed by a non-dot, so ".." cannot occur.
NAME_PATTERN = r"^[a-z0-9](?:\.?[a-z0-9_-])*\.?$"
TYPE_PATTERN = "^(" + "|".join(_any_case(t.value) for t in ExtensionType) + ")[sS]?$"
VERSION_PATTERN = r"^[0-9A-Za-z.*^~<>=!, +-]+$"

TypeName = Annotated[
    str,
    Meta(
        pattern=TYPE_PATTERN,
        description="provider, taskserv or cluster; the plural and any letter case are accepted",
        examples=["taskserv"],
    ),
]
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN,
        description="1-64 characters of a-z 0-9 - _ ., starting with a letter or digit, no '..'",
        examples=["kubernetes"],
    ),
]
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339, UTC")]
VersionSpec = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=VERSION_PATTERN,
        description='an exact version, a constraint ("^1.28", "~1.28.0", ">=1.27,<2", "1.28.*") or "latest"',
        examples=["1.28.0", "^1.28", "latest"],
    ),
]
