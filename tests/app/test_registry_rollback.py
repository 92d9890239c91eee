"""Attacks on the registry in time, each made with what the attacker holds and judged by what the loaders do: a
version withdrawn without a signed word, an older record replayed (while a loader runs, and while it is down), an
index frozen at some moment, records of the old format, and a change of release key. As in
tests/app/test_registry_attacks.py, the attacker holds the `publisher` password of the repo's nats.conf and no
key a loader pins (tests/registry/layout.py); the honest publisher publishes, yanks, refreshes and re-signs with
pinned keys.

Every wait is on an event or a condition, bounded; nothing sleeps.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import nkeys
import pytest

from service.app.publishing import PublishRefused
from service.app.resigning import resign
from service.app.signing_states import refresh
from service.core.folders import tree_digest
from service.registry import statements
from service.registry.archive import digest_bytes, pack
from service.registry.index import (
    TIMESTAMP_KEY,
    Release,
    decode_record,
    encode_record,
    index_key,
    object_name,
    with_release,
)
from service.registry.signing import Signer, read_seed, statement, write_seed
from service.registry.statements import TimestampStatement
from tests.conftest import running_service, write_extension
from tests.deploy.test_nats_security import registry_cli, run_cli
from tests.registry import signed
from tests.registry.layout import (
    Layout,
    applied,
    archives,
    audit_lines,
    layout,
    loaded,
    refusal,
    updates,
    wait_until,
)

pytestmark = pytest.mark.anyio
POSTGRES = index_key("taskserv", "postgres")


# --- 3. the newest version taken out of the index --------------------------------------------------------------


async def test_a_version_removed_without_a_signed_statement_never_makes_an_older_latest(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    async with layout(tmp_path) as registry:
        await registry.publish(signer, "taskserv", "postgres", "16.1.0")
        older = await registry.raw(POSTGRES)  # sequence 1, genuinely signed: 16.1.0 alone
        await registry.publish(signer, "taskserv", "postgres", "16.2.0")
        newest = decode_record(await registry.raw(POSTGRES))  # sequence 2
        await registry.publish(signer, "cluster", "web", "1.0.0", dependencies=["postgres@^16"])
        async with running_service(registry.loader("loader", signer.public_key, auto_update=True)) as service:
            client = registry.client
            mark = registry.mark()
            # The older record written back whole; then the newest releases under the older state.
            assert newest.state is not None and decode_record(older).state is not None
            for value in (older, encode_record(msgspec.structs.replace(newest, state=decode_record(older).state))):
                before = updates(service)
                await registry.write(POSTGRES, value)
                await applied(service, before)
            assert (await client.stats())["registry"]["rollbacks"] == 2
            rollbacks = audit_lines(caplog, "refused")
            assert [(extension, outcome) for extension, outcome, _ in rollbacks] == [(POSTGRES, "ROLLBACK")] * 2
            assert "its signed state is sequence 1, older than 2 seen before" in rollbacks[0][2]
            (postgres,) = await client.discover("taskserv", "postgres")  # the view of sequence 2, kept
            assert {s["version"]: s["trusted"] for s in postgres["sources"]} == {"16.2.0": True, "16.1.0": True}

            # The newest release taken out, the state that lists it kept.
            before = updates(service)
            shorter = {v: r for v, r in newest.releases.items() if v != "16.2.0"}
            await registry.write(POSTGRES, encode_record(msgspec.structs.replace(newest, releases=shorter)))
            await applied(service, before)
            await registry.marker(signer)
            assert registry.since(mark) == []  # nothing unloaded, nothing loaded in its place
            # As a dependency: web's `taskserv:postgres@^16` is 16.2.0, which is refused; 16.1.0 is never loaded in
            # its place.
            error = await refusal(client.load("cluster", "web", with_dependencies=True))
            assert loaded(registry.since(mark)) == []
            assert (error.code, error.details.get("name"), error.details.get("version")) == (
                "untrusted_extension",
                "postgres",
                "16.2.0",
            )
            for asked in (None, "^16", ">=16.1.0"):
                error = await refusal(client.load("taskserv", "postgres", asked))
                assert error.code == "untrusted_extension", (asked, error.message)
                assert (error.details["version"], error.details["reason"]) == (
                    "16.2.0",
                    "it is listed in its extension's signed state, but the index record does not hold it",
                )
        # A loader that starts now, without a view of its own, refuses it the same way.
        async with running_service(registry.loader("later", signer.public_key)):
            error = await refusal(registry.client.load("taskserv", "postgres"))
            assert (error.code, error.details["version"]) == ("untrusted_extension", "16.2.0")


# --- 4. an older record replayed while a loader is down --------------------------------------------------------


async def test_a_replayed_older_record_is_ignored_after_a_restart(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    async with layout(tmp_path) as registry:
        await registry.publish(signer, "taskserv", "postgres", "16.1.0")
        replay = await registry.raw(POSTGRES)  # the record at sequence 1, as the attacker kept it
        newest = await registry.publish(signer, "taskserv", "postgres", "16.2.0")  # sequence 2
        await refresh(registry.buckets, signer, (), 3600)  # a timestamp that names sequence 2
        config = registry.loader("loader", signer.public_key, auto_update=True)
        async with running_service(config) as service:
            assert (await registry.client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"
            await registry.events.wait_for(1, ".loaded")
            assert archives(service) == {newest.digest}

        await registry.write(POSTGRES, replay)  # while the loader is down
        mark = registry.mark()
        async with running_service(config) as service:
            await wait_until(service, lambda releases: releases.rollbacks == 1)
            assert (await registry.client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"
            (postgres,) = await registry.client.discover("taskserv", "postgres")
            assert postgres["versions"] == ["16.2.0", "16.1.0"]
            await registry.marker(signer)
            # Its first load of 16.2.0 since the start, and nothing else: no unload, no "published".
            assert [(e.get("reason"), *loaded([e])) for e in registry.since(mark)] == [
                ("load", ("taskserv", "postgres", "16.2.0"))
            ]
            stats = (await registry.client.stats())["registry"]
            assert (stats["rollbacks"], stats["fetched"]) == (1, 1)  # the marker's archive; 16.2.0's was kept
            (line,) = [m for e, o, m in audit_lines(caplog, "refused") if o == "ROLLBACK"]
            assert "its signed state is sequence 1, older than 2 seen before" in line

        # A loader that never ran before has no view to keep; the signed timestamp names sequence 2, so the replay
        # is refused there too, and 16.1.0 is never what it loads.
        async with running_service(registry.loader("fresh", signer.public_key)) as service:
            await wait_until(service, lambda releases: releases.rollbacks == 1)
            error = await refusal(registry.client.load("taskserv", "postgres"))
            assert error.code == "not_found"


# --- 5. an index frozen at some moment -------------------------------------------------------------------------


def timestamp(signer: Signer, issued: timedelta, expires: timedelta, sequences: dict[str, int]) -> bytes:
    """A timestamp signed by `signer`, issued and expiring at these offsets from now."""
    now = datetime.now(UTC)
    stamp = TimestampStatement(issued_at=now + issued, expires_at=now + expires, sequences=sequences)
    return msgspec.json.encode(statements.seal(stamp, [signer]))


async def test_a_frozen_index_is_reported_stale_and_served_on(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with layout(tmp_path) as registry:
        await registry.publish(signer, "taskserv", "postgres", "16.1.0")
        # Signed an hour ago by the trusted key, and served ever since: what a frozen registry keeps showing.
        frozen = timestamp(signer, timedelta(hours=-1), timedelta(days=1), {POSTGRES: 1})
        await registry.write(TIMESTAMP_KEY, frozen)
        async with running_service(registry.loader("loader", signer.public_key, max_age_s=60)) as service:
            client = registry.client

            async def registry_stats() -> dict[str, object]:
                stats: dict[str, object] = (await client.stats())["registry"]
                return stats

            stats = await registry_stats()
            assert isinstance(stats["view_age_s"], float) and stats["view_age_s"] >= 3600
            assert isinstance(stats["stale"], str) and "over registry.max_age_s = 60" in stats["stale"]
            assert "this loader's view of the index is stale" in caplog.text
            assert (await client.load("taskserv", "postgres"))["metadata"]["version"] == "16.1.0"  # served on

            # The attacker's own fresh timestamp, and one the trusted key signed that has expired since.
            for value in (
                timestamp(signed.key(), timedelta(0), timedelta(days=1), {POSTGRES: 1}),
                timestamp(signer, timedelta(minutes=-10), timedelta(minutes=-1), {POSTGRES: 1}),
            ):
                before = updates(service)
                await registry.write(TIMESTAMP_KEY, value)
                await applied(service, before)
            stats = await registry_stats()
            assert isinstance(stats["stale"], str) and stats["stale"].startswith("the newest signed timestamp expired")
            assert stats["unsigned"] == 1  # the attacker's
            assert isinstance(stats["view_age_s"], float) and 600 <= stats["view_age_s"] < 3600

            # `extension-loader refresh` signs a timestamp of the index as it is: fresh again.
            before = updates(service)
            key = str(tmp_path / "publisher.nk")
            argv = registry_cli("refresh", "--key", key, "--server", registry.url, user="publisher")
            code, out, said = await run_cli(argv)
            assert code == 0, said
            assert out.startswith("signed a timestamp of 1 extension,")
            await applied(service, before)
            stats = await registry_stats()
            assert stats["stale"] is None
            assert isinstance(stats["view_age_s"], float) and stats["view_age_s"] < 60
            assert "this loader's view of the index is fresh again" in caplog.text

            # The frozen timestamp written back changes nothing: an older one is never taken.
            before = updates(service)
            await registry.write(TIMESTAMP_KEY, frozen)
            await applied(service, before)
            stats = await registry_stats()
            assert stats["stale"] is None
            assert isinstance(stats["view_age_s"], float) and stats["view_age_s"] < 60


# --- 10. the old format ----------------------------------------------------------------------------------------


def user_key() -> Signer:
    """A NATS user key (U...), as the old format's publishers signed with."""
    return Signer(nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)))


async def publish_v1(
    registry: Layout, user: Signer, kind: str, name: str, version: str, dependencies: list[str] | None = None
) -> Release:
    """A release as the old format's publisher wrote it: its archive, and an index entry whose signature covers
    the identity and the archive's digest alone; no statement, no state."""
    folder = write_extension(
        registry.folder / "v1" / f"{name}-{version}", kind, name, version, dependencies=dependencies
    )
    archive = pack(folder)
    digest = digest_bytes(archive)
    release = Release(
        version=version,
        description=f"test extension {name}",
        dependencies=tuple(dependencies or ()),
        digest=digest,
        tree_digest=tree_digest(folder),
        size=len(archive),
        object=object_name(digest),
        signer=user.public_key,
        signature=user.sign(statement(kind, name, version, digest)),
        published_at=datetime.now(UTC),
    )
    await registry.buckets.archives.put(release.object, archive)
    key = index_key(kind, name)
    value, _ = await registry.buckets.index.get(key)
    record = with_release(decode_record(value) if value is not None else None, kind, name, release)
    await registry.write(key, encode_record(record))
    return release


async def test_an_old_format_registry_is_refused_until_resigned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    old = user_key()
    new_file = tmp_path / "new.nk"
    write_seed(new_file)
    new = read_seed(new_file)
    async with layout(tmp_path) as registry:
        for version in ("16.1.0", "16.2.0"):
            await publish_v1(registry, old, "taskserv", "postgres", version)
        await publish_v1(registry, old, "cluster", "web", "1.0.0", dependencies=["postgres@^16"])
        before_resign = await registry.raw(POSTGRES)

        # A loader of today refuses every release of it, saying what to do.
        async with running_service(registry.loader("today", new.public_key)):
            for kind, name in (("taskserv", "postgres"), ("cluster", "web")):
                error = await refusal(registry.client.load(kind, name, with_dependencies=True))
                assert error.code == "untrusted_extension"
                reason = error.details["reason"]
                assert "old format (v1)" in reason
                assert "extension-loader resign" in reason and "registry.accept_v1 = true" in reason

        # Asked to, a loader takes the old format from the user key it pins, and says so at its start.
        caplog.clear()
        async with running_service(registry.loader("v1", old.public_key, accept_v1=True)):
            assert "registry.accept_v1 is set" in caplog.text
            mark = registry.mark()
            await registry.client.load("cluster", "web", with_dependencies=True)
            done = await registry.events.wait_for(mark + 2)
            assert loaded(done[mark:]) == [("taskserv", "postgres", "16.2.0"), ("cluster", "web", "1.0.0")]

        # `extension-loader resign` signs it again with a release key, from the archives themselves.
        argv = registry_cli(
            "resign", "--key", str(new_file), "--from", old.public_key, "--server", registry.url, user="publisher"
        )
        code, out, said = await run_cli(argv)
        assert code == 0, said
        assert out.splitlines() == ["re-signed cluster.web: 1.0.0", "re-signed taskserv.postgres: 16.1.0, 16.2.0"]
        web = (await registry.read("cluster", "web")).releases["1.0.0"]
        assert web.dependencies == ("taskserv:postgres@^16",)  # typed when signed again

        # A loader that pins the release key alone, the old format not accepted, loads all of it.
        async with running_service(registry.loader("resigned", new.public_key)):
            mark = registry.mark()
            await registry.client.load("cluster", "web", with_dependencies=True)
            done = await registry.events.wait_for(mark + 2)
            assert loaded(done[mark:]) == [("taskserv", "postgres", "16.2.0"), ("cluster", "web", "1.0.0")]

        # Once a loader has seen a signed state of an extension, the old record written back is a rollback, even
        # where the old format is still accepted: it would undo the signed yank of 16.2.0.
        await registry.yank(new, "taskserv", "postgres", "16.2.0")
        config = registry.loader("both", old.public_key, new.public_key, accept_v1=True, auto_update=True)
        async with running_service(config) as service:
            before = updates(service)
            mark = registry.mark()
            await registry.write(POSTGRES, before_resign)
            await applied(service, before)
            await registry.marker(new)
            assert registry.since(mark) == []  # 16.2.0 not loaded as restored
            assert (await registry.client.load("taskserv", "postgres"))["metadata"]["version"] == "16.1.0"
            assert (await registry.client.stats())["registry"]["rollbacks"] == 1


# --- 11. a change of release key -------------------------------------------------------------------------------


async def test_a_key_rotation_keeps_every_version_loadable(tmp_path: Path) -> None:
    old, new = signed.key(), signed.key()
    async with layout(tmp_path) as registry:
        first = await registry.publish(old, "taskserv", "postgres", "16.1.0")
        # Loaders pin the new key beside the old one before the publisher signs with it.
        async with running_service(registry.loader("both", old.public_key, new.public_key, auto_update=True)):
            # A publisher whose configuration does not trust the old key cannot build on the state it signed.
            with pytest.raises(PublishRefused, match=f"signed by {old.public_key}, which this publisher does not"):
                await registry.publish(new, "taskserv", "postgres", "16.2.0")
            second = await registry.publish(new, "taskserv", "postgres", "16.2.0", trusted=[old.public_key])
            (published,) = await registry.events.wait_for(1, ".loaded")
            assert (published["reason"], *loaded([published])) == ("published", ("taskserv", "postgres", "16.2.0"))
            assert first.signer == old.public_key and second.signer == new.public_key
            record = await registry.read("taskserv", "postgres")
            assert record.state is not None and {s.key for s in record.state.signatures} == {new.public_key}
            for version, release in (("16.1.0", first), ("16.2.0", second)):
                answer = await registry.client.load("taskserv", "postgres", version)
                assert answer["digest"] == release.tree_digest
            assert (await registry.client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"

        # What unpinning the old key does, and so what must come first. A loader that never pinned the new key
        # trusts nothing of postgres any more: its state is signed by the new key alone.
        async with running_service(registry.loader("old-only", old.public_key)):
            error = await refusal(registry.client.load("taskserv", "postgres", "16.1.0"))
            assert error.details["reason"] == (
                f"its extension's signed state is not trusted: its signer {new.public_key} is not one of the keys "
                "this loader trusts"
            )
        # A loader that pins the new key alone trusts the new releases; 16.1.0's statement is still the old key's,
        # so until it is signed again the old key stays pinned for as long as a release it signed must load.
        async with running_service(registry.loader("new-only", new.public_key)):
            assert (await registry.client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"
            error = await refusal(registry.client.load("taskserv", "postgres", "16.1.0"))
            assert error.details["reason"] == f"its signer {old.public_key} is not one of the keys this loader trusts"
        # `resign --from OLD` signs the old key's statements again with the new key (their bytes unchanged): then a
        # loader pinning the new key alone loads every version, and the old key may be unpinned everywhere.
        done = await resign(registry.buckets, new, [old.public_key], registry.publisher_config([old.public_key]))
        assert [(r.key, r.versions, r.left_out) for r in done] == [("taskserv.postgres", ("16.1.0",), ())]
        async with running_service(registry.loader("new-only-after", new.public_key)):
            for version, release in (("16.1.0", first), ("16.2.0", second)):
                answer = await registry.client.load("taskserv", "postgres", version)
                assert answer["digest"] == release.tree_digest
