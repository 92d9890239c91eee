"""Whether this loader trusts what the index says, judged only with the keys pinned in its configuration (allowed
for a type and name as `[[registry.trusted]]` says), never with a key from the registry.

A record is judged whole (`judge`): its extension's signed state must be signed by a key allowed for it, and it
decides which versions exist, which are yanked, and the sequence number a loader never goes back from
(`releases.py` keeps that). A release is trusted when the state lists its statement's digest, a key allowed for
the extension signed that statement, and the record's plain copy says what the statement says. A version the
state lists that cannot be trusted still "blocks": a constraint whose best version it is refuses it, rather than
falling back to an older one. A record of the old format (v1: no state, a signature of identity and archive
digest alone) is judged by the old rules only where `registry.accept_v1` allows it.

Verifications are kept by what was signed, so a record read again costs no second verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..contract.config import TrustedKey
from ..contract.messages import ExtensionType
from ..registry import signing, statements
from ..registry.index import IndexRecord, Release
from ..registry.statements import Envelope, ReleaseStatement, StatementInvalid, StateStatement, TimestampStatement

_RESIGN = 're-sign it with `extension-loader resign`, or set registry.accept_v1 = true (README.md, "Registry")'


@dataclass(frozen=True, slots=True)
class Verdict:
    """One version of a record, as judged: why it is not trusted (None: it is), whether the signed state yanks it,
    and whether, untrusted, it still counts when a constraint chooses (listed in the signed state)."""

    untrusted: str | None
    yanked: bool
    blocks: bool = False


@dataclass(slots=True)
class Judgement:
    """A whole record, as judged. `sequence`: its signed state's, None without a trusted one; `missing`: the
    versions the signed state lists that the record does not hold; `ignored`: what the record says that no trusted
    key signed (reported, never acted on)."""

    sequence: int | None
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    ignored: list[str] = field(default_factory=list)


class Trust:
    """The keys pinned in the configuration, and what they were found to sign."""

    def __init__(self, trusted: Sequence[TrustedKey], *, accept_v1: bool = False) -> None:
        self._trusted = trusted
        self._keys = frozenset(t.key for t in trusted)
        self._accept_v1 = accept_v1
        self._signed: dict[tuple[str, str, tuple[tuple[str, str], ...]], frozenset[str]] = {}
        self._v1: dict[tuple[str, str, str, str, str, str], bool] = {}

    # --- a whole record ---

    def judge(self, record: IndexRecord) -> Judgement:
        extension_type, name = record.extension_type, record.name
        if record.state is None:
            return self._judge_v1(record)
        state, why = self._state(record)
        if state is None:
            reason = f"its extension's signed state is not trusted: {why}"
            return Judgement(None, {v: Verdict(reason, r.yanked) for v, r in record.releases.items()})
        judgement = Judgement(state.sequence, missing=tuple(v for v in state.releases if v not in record.releases))
        for version, release in record.releases.items():
            yanked = version in state.yanked
            listed = state.releases.get(version)
            if listed is None:
                untrusted: str | None = "it is not in its extension's signed state"
            elif release.statement is None or _digest(release.statement) != listed:
                untrusted = "its statement is not the one its extension's signed state lists"
            else:
                untrusted = self.untrusted(extension_type, name, release)
            judgement.verdicts[version] = Verdict(untrusted, yanked, listed is not None and untrusted is not None)
            if release.yanked != yanked:
                judgement.ignored.append(f"{version}: a yanked flag ({release.yanked}) no key signed")
        return judgement

    def _state(self, record: IndexRecord) -> tuple[StateStatement | None, str]:
        envelope = record.state
        assert envelope is not None
        allowed = self._allowed(record.extension_type, record.name)
        signers = self._signers(envelope)
        if not signers:
            claimed = ", ".join(sorted({s.key for s in envelope.signatures})) or "(none)"
            return None, f"its signer {claimed} is not one of the keys this loader trusts"
        if not signers & allowed:
            limits = " or ".join(_limits(t) for t in self._trusted if t.key in signers)
            what = f"{record.extension_type.value} {record.name}"
            return None, f"its signer {', '.join(sorted(signers))} is trusted here only for {limits}, not for {what}"
        try:
            state = statements.read(envelope, StateStatement)
        except StatementInvalid as exc:
            return None, str(exc)
        if (state.extension_type, state.name) != (record.extension_type, record.name):
            return None, f"it is the state of {state.extension_type.value} {state.name}"
        return state, ""

    def _judge_v1(self, record: IndexRecord) -> Judgement:
        judgement = Judgement(None)
        for version, release in record.releases.items():
            if self._accept_v1:
                untrusted = self.untrusted(record.extension_type, record.name, release)
            else:
                untrusted = f"it is signed in the old format (v1), which leaves its metadata unsigned: {_RESIGN}"
            judgement.verdicts[version] = Verdict(untrusted, release.yanked)
        return judgement

    # --- one release ---

    def untrusted(self, extension_type: ExtensionType, name: str, release: Release) -> str | None:
        """Why this release's own statement is not trusted here; None when it is. (Whether its extension's state
        lists it is `judge`'s part.)"""
        pinned = [t for t in self._trusted if t.key == release.signer]
        if not pinned:
            return f"its signer {release.signer or '(none)'} is not one of the keys this loader trusts"
        if not any(t.allows(extension_type.value, name) for t in pinned):
            limits = " or ".join(_limits(t) for t in pinned)
            return (
                f"its signer {release.signer} is trusted here only for {limits}, not for {extension_type.value} {name}"
            )
        if release.statement is None:
            if not self._accept_v1:
                return f"it is signed in the old format (v1), which leaves its metadata unsigned: {_RESIGN}"
            return None if self._verifies_v1(extension_type, name, release) else "its signature does not verify"
        if release.signer not in self._signers(release.statement):
            return "its signature does not verify"
        try:
            signed = statements.read(release.statement, ReleaseStatement)
        except StatementInvalid as exc:
            return f"its statement cannot be read: {exc}"
        differs = _differences(extension_type, name, release, signed)
        if differs:
            return f"its index entry does not say what its signed statement says: {', '.join(differs)} differ"
        return None

    def timestamp(self, envelope: Envelope) -> TimestampStatement | None:
        """The timestamp an envelope carries, when a pinned key without limits signed it; else None."""
        unlimited = {t.key for t in self._trusted if not t.types and not t.names}
        if not self._signers(envelope) & unlimited:
            return None
        try:
            return statements.read(envelope, TimestampStatement)
        except StatementInvalid:
            return None

    def _allowed(self, extension_type: ExtensionType, name: str) -> frozenset[str]:
        return frozenset(t.key for t in self._trusted if t.allows(extension_type.value, name))

    def _signers(self, envelope: Envelope) -> frozenset[str]:
        """The pinned keys whose signature of the envelope verifies."""
        key = (envelope.payload_type, envelope.payload, tuple((s.key, s.sig) for s in envelope.signatures))
        signers = self._signed.get(key)
        if signers is None:
            signers = self._signed[key] = frozenset(statements.signed_by(envelope, self._keys))
        return signers

    def _verifies_v1(self, extension_type: ExtensionType, name: str, release: Release) -> bool:
        key = (extension_type.value, name, release.version, release.digest, release.signer, release.signature)
        if key not in self._v1:
            statement = signing.statement(extension_type.value, name, release.version, release.digest)
            self._v1[key] = bool(release.signature) and signing.verify(
                release.signer, statement, release.signature, user_keys=True
            )
        return self._v1[key]


def _digest(envelope: Envelope) -> str | None:
    try:
        return envelope.digest()
    except StatementInvalid:
        return None


_COPIED = ("version", "digest", "tree_digest", "size", "dependencies", "description", "author", "repository")


def _differences(extension_type: ExtensionType, name: str, release: Release, signed: ReleaseStatement) -> list[str]:
    """The fields whose plain copy in the record is not what was signed."""
    differs = [f for f in _COPIED if getattr(release, f) != getattr(signed, f)]
    if signed.published_at != release.published_at:
        differs.append("published_at")
    if (signed.extension_type, signed.name) != (extension_type, name):
        differs.insert(0, "extension")
    if release.object != signed.digest.replace(":", "/", 1):
        differs.append("object")
    return differs


def _limits(trusted: TrustedKey) -> str:
    """What one pinned key is limited to, as its `[[registry.trusted]]` entry says: "types a and names b, c"."""
    kinds = (("types", trusted.types), ("names", trusted.names))
    return " and ".join(f"{kind} {', '.join(values)}" for kind, values in kinds if values)
