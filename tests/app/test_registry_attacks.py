"""Attacks on the registry's metadata, each made with what the attacker holds and judged by what the loaders do:
what they load, what they choose as latest, what they announce on `extensions.loaded`/`extensions.unloaded`, and
what their stats and audit lines say.

The attacker of most tests holds the `publisher` password of the repo's nats.conf and no key a loader pins: it
writes the index and the archives directly (tests/registry/layout.py). The honest publisher logs in the same way
and publishes, yanks and refreshes with a pinned key, through the same functions as the command line. A malicious
server (its records never published at all) is a plain JetStream server whose buckets the test writes.
tests/app/test_registry_rollback.py holds the attacks on time: rollbacks, replays, frozen views, old formats and
key rotation.

Every wait is on an event or a condition, bounded; nothing sleeps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from service.app.client import RemoteError
from service.contract.messages import ExtensionType
from service.registry.index import IndexRecord, index_key
from service.registry.signing import Signer
from service.wire.service import ExtensionService
from tests.conftest import WAIT, running_service, write_extension
from tests.registry import signed
from tests.registry.layout import applied, archives, layout, updates

pytestmark = pytest.mark.anyio


def audit_lines(caplog: pytest.LogCaptureFixture, action: str) -> list[tuple[str, str, str]]:
    """(extension, outcome, message) of each audit line of one action."""
    lines = [r for r in caplog.records if r.name == "service.audit" and r.__dict__.get("action") == action]
    return [(r.__dict__["extension"], r.__dict__["outcome"], r.getMessage()) for r in lines]


async def wait_until_known(service: ExtensionService, kind: str, name: str, version: str) -> None:
    """Until the loader's follower has read `version` of an extension from the index."""
    follower, releases = service.follower, service.manager.releases
    assert follower is not None and releases is not None
    with anyio.fail_after(WAIT):
        while version not in releases.versions(ExtensionType(kind), name):
            await follower.wait_updates(follower.updates + 1)


def loaded(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(type, name, version) of each `extensions.loaded` event."""
    found = []
    for event in events:
        if "extension" in event:
            metadata = event["extension"]["metadata"]
            found.append((metadata["extension_type"], metadata["name"], metadata["version"]))
    return found


async def refusal(call: Any) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        await call
    return caught.value


# --- 1. dependencies rewritten in the index --------------------------------------------------------------------


async def test_rewritten_dependencies_inject_nothing(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    attacker = signed.key()
    async with layout(tmp_path) as registry:
        await registry.publish(signer, "taskserv", "postgres", "16.2.0")
        await registry.publish(signer, "taskserv", "legacy", "1.0.0")
        await registry.yank(signer, "taskserv", "legacy", "1.0.0")  # withdrawn: nothing may bring it back
        for root in ("web", "api"):
            await registry.publish(signer, "cluster", root, "1.0.0", dependencies=["postgres@^16"])
        # The attacker's own extension, indexed under its own key: what it wants loaded.
        backdoor = await registry.forge(attacker, "taskserv", "backdoor", "1.0.0")
        await registry.write(
            index_key("taskserv", "backdoor"), signed.value(signed.record(attacker, [backdoor], name="backdoor"))
        )
        legacy = (await registry.read("taskserv", "legacy")).releases["1.0.0"]

        async with running_service(registry.loader("loader", signer.public_key)) as service:
            client = registry.client
            cached = await client.load("cluster", "web", with_dependencies=True)  # fetched and cached before
            await registry.events.wait_for(2, ".loaded")
            assert cached["metadata"]["version"] == "1.0.0"
            assert (await registry.read("cluster", "web")).releases["1.0.0"].dependencies == ("taskserv:postgres@^16",)
            kept = archives(service)
            assert len(kept) == 2
            mark = registry.mark()

            injected = ("taskserv:backdoor@1.0.0", "taskserv:legacy@1.0.0")
            before = updates(service)
            for root in ("web", "api"):
                record = await registry.read("cluster", root)
                release = record.releases["1.0.0"]
                forged = msgspec.structs.replace(release, dependencies=(*release.dependencies, *injected))
                rewritten = msgspec.structs.replace(record, releases={"1.0.0": forged})
                await registry.write(index_key("cluster", root), signed.value(rewritten))
            await applied(service, before + 1)

            for root in ("web", "api"):  # web cached, api never loaded
                error = await refusal(client.load("cluster", root, with_dependencies=True))
                assert error.code == "untrusted_extension"
                assert (error.details["name"], error.details["version"]) == (root, "1.0.0")
                assert error.details["reason"] == (
                    "its index entry does not say what its signed statement says: dependencies differ"
                )
                graph = await refusal(client.graph("cluster", root))
                assert graph.code == "untrusted_extension"
            assert archives(service) == kept  # nothing of the injected dependencies fetched
            assert backdoor.digest not in archives(service) and legacy.digest not in archives(service)
            assert loaded(registry.since(mark)) == []
            # Asked for by name, the injected ones are refused or skipped as they were before.
            error = await refusal(client.load("taskserv", "backdoor"))
            assert error.code == "untrusted_extension"
            assert (
                error.details["reason"]
                == "its extension's signed state is not trusted: no key this loader trusts signed it"
            )
            error = await refusal(client.load("taskserv", "legacy"))
            assert error.code == "version_not_found"
            assert archives(service) == kept
            refused = [(extension, outcome) for extension, outcome, _ in audit_lines(caplog, "refused")]
            assert refused == [
                ("cluster:web:1.0.0", "untrusted_extension"),
                ("cluster:web:1.0.0", "untrusted_extension"),
                ("cluster:api:1.0.0", "untrusted_extension"),
                ("cluster:api:1.0.0", "untrusted_extension"),
                ("taskserv:backdoor:1.0.0", "untrusted_extension"),
            ]
            assert loaded(registry.since(mark)) == []


# --- 2. a yank undone (and a yank made) without a key ----------------------------------------------------------


async def test_an_unsigned_un_yank_changes_nothing(
    tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    async with layout(tmp_path) as registry:
        for version in ("16.1.0", "16.2.0", "16.3.0"):
            await registry.publish(signer, "taskserv", "postgres", version)
        await registry.yank(signer, "taskserv", "postgres", "16.3.0")  # signed: 16.3.0 is withdrawn
        async with running_service(registry.loader("loader", signer.public_key, auto_update=True)) as service:
            client = registry.client
            assert (await client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"
            await registry.events.wait_for(1, ".loaded")
            kept = archives(service)
            mark = registry.mark()

            record = await registry.read("taskserv", "postgres")
            flipped = {v: msgspec.structs.replace(r, yanked=v == "16.2.0") for v, r in record.releases.items()}
            before = updates(service)
            await registry.write(
                index_key("taskserv", "postgres"), signed.value(msgspec.structs.replace(record, releases=flipped))
            )
            await applied(service, before)
            await registry.marker(signer)

            assert registry.since(mark) == []  # nothing loaded as published, nothing unloaded as yanked
            assert archives(service) - kept == {
                r.digest for r in (await registry.read("taskserv", "marker")).releases.values()
            }
            assert (await client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"
            (postgres,) = await client.discover("taskserv", "postgres")
            assert {s["version"]: s["yanked"] for s in postgres["sources"]} == {
                "16.3.0": True,
                "16.2.0": False,
                "16.1.0": False,
            }
            stats = (await client.stats())["registry"]
            assert stats["unsigned"] == 2
            ignored = audit_lines(caplog, "ignored")
            assert [(extension, outcome) for extension, outcome, _ in ignored] == [
                ("taskserv:postgres", "UNSIGNED")
            ] * 2
            said = " ".join(message for _, _, message in ignored)
            assert "16.3.0: a yanked flag (False) no key signed" in said
            assert "16.2.0: a yanked flag (True) no key signed" in said
        # A loader that starts now reads the same.
        async with running_service(registry.loader("later", signer.public_key, auto_update=True)):
            assert (await client.load("taskserv", "postgres"))["metadata"]["version"] == "16.2.0"
            assert (await client.stats())["registry"]["unsigned"] == 2


# --- 6. a key pinned for clusters, and a cluster of the name another key's dependency has ---------------------


async def test_a_scoped_key_cannot_change_how_another_key_s_extension_resolves(tmp_path: Path, signer: Signer) -> None:
    clusters_only = signed.key()  # B: pinned for clusters only
    async with layout(tmp_path) as registry:
        for version in ("16.1.0", "16.2.0"):
            await registry.publish(signer, "taskserv", "postgres", version)
        web = await registry.publish(signer, "cluster", "web", "1.0.0", dependencies=["postgres@^16"])
        assert web.dependencies == ("taskserv:postgres@^16",)  # typed when signed: no cluster postgres then
        await registry.publish(clusters_only, "cluster", "postgres", "16.9.0")
        trusted = [{"key": signer.public_key}, {"key": clusters_only.public_key, "types": ["cluster"]}]
        async with running_service(registry.loader("loader", trusted=trusted)) as service:
            client = registry.client
            root = await client.load("cluster", "web", with_dependencies=True)
            assert root["metadata"]["version"] == "1.0.0"
            done = await registry.events.wait_for(2, ".loaded")
            assert loaded(done) == [("taskserv", "postgres", "16.2.0"), ("cluster", "web", "1.0.0")]
            graph = await client.graph("cluster", "web")
            assert graph["edges"] == [{"from": "cluster:web:1.0.0", "to": "taskserv:postgres:16.2.0"}]
            # What B is pinned for, it publishes: its cluster loads when asked for by its type.
            assert (await client.load("cluster", "postgres"))["metadata"]["version"] == "16.9.0"

            # The next version of web, published by A as its author wrote it ("postgres@^16", no type), after B's
            # cluster postgres is in the index: A's publisher does not trust B, so B's record must not decide what
            # A signs.
            newer = await registry.publish(signer, "cluster", "web", "1.1.0", dependencies=["postgres@^16"])
            await wait_until_known(service, "cluster", "web", "1.1.0")
            graph = await client.graph("cluster", "web")
            assert graph["edges"] == [{"from": "cluster:web:1.1.0", "to": "taskserv:postgres:16.2.0"}]
            assert newer.dependencies == ("taskserv:postgres@^16",)


# --- 7. records written with the publisher's password alone ----------------------------------------------------


async def test_an_unsigned_record_breaks_no_one_else_s_resolution(tmp_path: Path, signer: Signer) -> None:
    attacker = signed.key()  # a key of its own, pinned nowhere
    own = tmp_path / "own"  # the operator's own extensions, on the loader's disk
    write_extension(own, "cluster", "local-db", "1.0.0", dependencies=["postgres@^16"])
    async with layout(tmp_path) as registry:
        for version in ("16.1.0", "16.2.0"):
            await registry.publish(signer, "taskserv", "postgres", version)
        await registry.publish(signer, "cluster", "web", "1.0.0", dependencies=["postgres@^16"])
        await registry.publish(signer, "taskserv", "redis", "7.0.0")

        def as_before(done: list[dict[str, Any]]) -> None:
            assert loaded(done) == [
                ("taskserv", "postgres", "16.2.0"),
                ("cluster", "web", "1.0.0"),
                ("cluster", "local-db", "1.0.0"),
                ("taskserv", "redis", "7.0.0"),
            ]

        async def load_everything(name: str) -> list[dict[str, Any]]:
            mark = registry.mark()
            async with running_service(registry.loader(name, signer.public_key, roots=[own])):
                client = registry.client
                await client.load("cluster", "web", with_dependencies=True)
                await client.load("cluster", "local-db", with_dependencies=True)
                await client.load("taskserv", "redis")
                await registry.events.wait_for(mark + 4)
            return registry.since(mark)

        as_before(await load_everything("before"))

        # A cluster named postgres: one signed by the attacker's key, one with no signature at all (the old
        # format's layout, its signature empty), each with an archive that would load.
        cluster = await registry.forge(attacker, "cluster", "postgres", "16.9.0")
        await registry.write(
            index_key("cluster", "postgres"),
            signed.value(signed.record(attacker, [cluster], name="postgres", kind=ExtensionType.CLUSTER)),
        )
        provider = await registry.forge(attacker, "provider", "postgres", "16.9.0")
        bare = msgspec.structs.replace(provider, statement=None, signature="")
        unsigned = IndexRecord(extension_type=ExtensionType.PROVIDER, name="postgres", releases={"16.9.0": bare})
        await registry.write(index_key("provider", "postgres"), signed.value(unsigned))
        # Forged releases in the records of others: a newer postgres, a newer web that wants the attacker's cluster.
        for kind, name, version, dependencies in (
            ("taskserv", "postgres", "16.10.0", ()),
            ("cluster", "web", "1.1.0", ("cluster:postgres@^16",)),
        ):
            forged = await registry.forge(attacker, kind, name, version, dependencies=dependencies)
            record = await registry.read(kind, name)
            extended = msgspec.structs.replace(record, releases={**record.releases, version: forged})
            await registry.write(index_key(kind, name), signed.value(extended))

        as_before(await load_everything("after"))

        # The next honest publish of web, its dependency written without a type as before: the attacker's record
        # must not decide what the trusted key signs.
        newer = await registry.publish(signer, "cluster", "web", "1.2.0", dependencies=["postgres@^16"])
        assert newer.dependencies == ("taskserv:postgres@^16",)
