"""Signed index records made by hand, as a key holder (or a forger holding some key, or none) would write them,
without the publisher's checks: what the loader's judgement is tested against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from service.app.signing_states import release_copy
from service.contract.messages import ExtensionType
from service.registry.index import IndexRecord, Release, encode_record
from service.registry.signing import Signer, new_seed
from service.registry.statements import ReleaseStatement, StateStatement, read, seal

WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def key() -> Signer:
    return Signer.from_seed(new_seed())


def statement(
    name: str = "redis",
    version: str = "1.0.0",
    *,
    kind: ExtensionType = ExtensionType.TASKSERV,
    digest: str = "sha256:" + "ab" * 32,
    tree_digest: str = "sha256:" + "cd" * 32,
    dependencies: Sequence[str] = (),
    size: int = 100,
) -> ReleaseStatement:
    return ReleaseStatement(
        extension_type=kind,
        name=name,
        version=version,
        digest=digest,
        size=size,
        tree_digest=tree_digest,
        dependencies=tuple(dependencies),
        description=f"{name} {version}",
        published_at=WHEN,
    )


def release(signer: Signer, signed: ReleaseStatement, **copies: object) -> Release:
    """A release whose plain fields copy its signed statement, but for `copies`."""
    plain = release_copy(seal(signed, [signer]), signed, signer.public_key, False)
    return msgspec.structs.replace(plain, **copies) if copies else plain


def record(
    signer: Signer,
    releases: Iterable[Release],
    *,
    name: str = "redis",
    kind: ExtensionType = ExtensionType.TASKSERV,
    sequence: int = 1,
    yanked: Sequence[str] = (),
    listed: Iterable[Release] | None = None,
    state_signer: Signer | None = None,
) -> IndexRecord:
    """A record of `releases` whose state, signed by `state_signer` (or `signer`), lists `listed` (or them)."""
    held = list(releases)
    state = StateStatement(
        extension_type=kind,
        name=name,
        sequence=sequence,
        releases={r.version: r.statement.digest() for r in (held if listed is None else listed) if r.statement},
        yanked=tuple(yanked),
        signed_at=WHEN,
    )
    return IndexRecord(
        extension_type=kind,
        name=name,
        releases={r.version: msgspec.structs.replace(r, yanked=r.version in yanked) for r in held},
        state=seal(state, [state_signer or signer]),
    )


def value(record: IndexRecord) -> bytes:
    return encode_record(record)


def extended(
    before: IndexRecord | None, signer: Signer, added: Release, *, kind: ExtensionType, name: str
) -> IndexRecord:
    """`before` with one more release, under a new state signed by `signer` that lists every release it holds (as a
    holder of a trusted key may write it, past the publisher's checks)."""
    held = [*(before.releases.values() if before is not None else ()), added]
    sequence = 1
    if before is not None and before.state is not None:
        sequence = read(before.state, StateStatement).sequence + 1
    yanked = [r.version for r in held if r.yanked]
    return record(signer, held, name=name, kind=kind, sequence=sequence, yanked=yanked)
