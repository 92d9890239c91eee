"""Whether this loader trusts a release: its signer is one of the keys pinned in this loader's configuration
(allowed for its type and name), and its signature verifies over the statement of its type, name, version and
archive digest (`registry/signing.py`). Never with a key from the registry.

A release is judged on every record read, whether it came from the bucket or from the saved index; a judgement
is kept for the release as signed, so a record read again costs no second verification.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..contract.config import TrustedKey
from ..contract.messages import ExtensionType
from ..registry import signing
from ..registry.index import Release


class Trust:
    """The keys pinned in the configuration, and what they were found to allow."""

    def __init__(self, trusted: Sequence[TrustedKey]) -> None:
        self._trusted = trusted
        self._judged: dict[tuple[str, str, str, str, str, str], str | None] = {}

    def untrusted(self, extension_type: ExtensionType, name: str, release: Release) -> str | None:
        """Why this release is not trusted here; None when it is."""
        key = (extension_type.value, name, release.version, release.digest, release.signer, release.signature)
        if key not in self._judged:
            self._judged[key] = self._judge(extension_type, name, release)
        return self._judged[key]

    def _judge(self, extension_type: ExtensionType, name: str, release: Release) -> str | None:
        pinned = [t for t in self._trusted if t.key == release.signer]
        if not pinned:
            return f"its signer {release.signer or '(none)'} is not one of the keys this loader trusts"
        if not any(t.allows(extension_type.value, name) for t in pinned):
            limits = " or ".join(_limits(t) for t in pinned)
            return (
                f"its signer {release.signer} is trusted here only for {limits}, not for {extension_type.value} {name}"
            )
        statement = signing.statement(extension_type.value, name, release.version, release.digest)
        if not release.signature or not signing.verify(release.signer, statement, release.signature):
            return "its signature does not verify"
        return None


def _limits(trusted: TrustedKey) -> str:
    """What one pinned key is limited to, as its `[[registry.trusted]]` entry says: "types a and names b, c"."""
    kinds = (("types", trusted.types), ("names", trusted.names))
    return " and ".join(f"{kind} {', '.join(values)}" for kind, values in kinds if values)
