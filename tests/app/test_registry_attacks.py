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
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient
from service.app.natsserver import NatsServer
from service.contract.config import Config
from service.contract.messages import ExtensionType
from service.core.folders import tree_digest
from service.registry import statements
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import IndexRecord, Release, decode_record, encode_record, index_key
from service.registry.signing import Signer
from service.registry.statements import StateStatement
from tests.conftest import WAIT, make_config, publish_folder, registry_settings, running_service, write_extension
from tests.registry import signed
from tests.registry.layout import (
    applied,
    archives,
    audit_lines,
    layout,
    loaded,
    refusal,
    trees,
    updates,
    wait_until_known,
)

pytestmark = pytest.mark.anyio


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

        async with running_service(registry.loader("loader", signer.public_key, auto_update=True)) as service:
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
            reason = error.details["reason"]
            assert re.fullmatch(
                "its extension's signed state is not trusted: its signer O[A-Z2-7]{55} is not one of the keys this "
                "loader trusts",
                reason,
            ), reason
            error = await refusal(client.load("taskserv", "legacy"))
            assert error.code == "version_not_found"
            await registry.marker(signer)  # what the loader announces after the refusals comes before this
            marker = {r.digest for r in (await registry.read("taskserv", "marker")).releases.values()}
            assert archives(service) == kept | marker
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


# --- 8. a malicious server: records no publisher ever wrote ----------------------------------------------------


def plain_loader(url: str, tmp_path: Path, signer: Signer) -> Config:
    """A loader of a plain JetStream server, trusting `signer`, with no extension tree."""
    empty = tmp_path / "no-tree"
    empty.mkdir(exist_ok=True)
    return make_config(url, tmp_path, roots=[empty], overrides=registry_settings(signer.public_key))


def checkout(tmp_path: Path, name: str, version: str, module: str = "export def check [] { {ok: true} }\n") -> Path:
    return write_extension(tmp_path / "checkout" / f"{name}-{version}", "taskserv", name, version, module=module)


async def test_records_never_published_through_the_cli_have_no_effect(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    config = plain_loader(nats_server.url, tmp_path, signer)
    published: dict[tuple[str, str], Release] = {}
    for name, version in (("etcd", "3.5.0"), ("etcd", "3.6.0"), ("redis", "7.0.0"), ("vault", "1.0.0")):
        published[name, version] = await publish_folder(nc, checkout(tmp_path, name, version), signer, config)
    for version in ("1.0.0", "1.1.0"):
        published["consul", version] = await publish_folder(nc, checkout(tmp_path, "consul", version), signer, config)
    buckets = RegistryBuckets(nc)
    await buckets.open()

    async def read(name: str) -> IndexRecord:
        value, _ = await buckets.index.get(index_key("taskserv", name))
        assert value is not None
        return decode_record(value)

    async def write(name: str, record: IndexRecord) -> None:
        _, revision = await buckets.index.get(index_key("taskserv", name))
        await buckets.index.put(index_key("taskserv", name), encode_record(record), revision)

    # A release the state does not list, signed by the trusted key itself, its archive in the bucket.
    extra = checkout(tmp_path, "etcd", "3.7.0")
    archive = pack(extra)
    statement = signed.statement(
        "etcd", "3.7.0", digest=digest_bytes(archive), tree_digest=tree_digest(extra), size=len(archive)
    )
    inserted = signed.release(signer, statement)
    await buckets.archives.put(inserted.object, archive)
    etcd = await read("etcd")
    await write("etcd", msgspec.structs.replace(etcd, releases={**etcd.releases, "3.7.0": inserted}))
    # A state signed by a key no loader pins: the sequence higher, the same releases listed.
    redis = await read("redis")
    assert redis.state is not None
    state = statements.read(redis.state, StateStatement)
    stranger_key = signed.key()
    stranger = statements.seal(msgspec.structs.replace(state, sequence=state.sequence + 5), [stranger_key])
    await write("redis", msgspec.structs.replace(redis, state=stranger))
    # The state of another extension, genuinely signed by the trusted key.
    vault = await read("vault")
    await write("vault", msgspec.structs.replace(vault, state=(await read("consul")).state))
    # Another version's release statement in place of 1.1.0's (its plain copies left as they were).
    consul = await read("consul")
    swapped = msgspec.structs.replace(consul.releases["1.1.0"], statement=consul.releases["1.0.0"].statement)
    await write("consul", msgspec.structs.replace(consul, releases={**consul.releases, "1.1.0": swapped}))

    cases = [
        ("etcd", "3.7.0", inserted, "it is not in its extension's signed state"),
        (
            "redis",
            "7.0.0",
            published["redis", "7.0.0"],
            f"its extension's signed state is not trusted: its signer {stranger_key.public_key} is not one of the "
            "keys this loader trusts",
        ),
        (
            "vault",
            "1.0.0",
            published["vault", "1.0.0"],
            "its extension's signed state is not trusted: it is the state of taskserv consul",
        ),
        (
            "consul",
            "1.1.0",
            published["consul", "1.1.0"],
            "its statement is not the one its extension's signed state lists",
        ),
    ]
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        for name, version, release, reason in cases:
            for asked in (version, None):  # pinned, and as the latest (3.7.0 is never the latest: it is not listed)
                if asked is None and name == "etcd":
                    continue
                error = await refusal(client.load("taskserv", name, asked))
                assert error.code == "untrusted_extension"
                assert (error.details["version"], error.details["reason"]) == (version, reason)
            assert release.digest not in archives(service) | trees(service)  # nothing of it fetched or unpacked
        # What the forgeries left alone loads, and is what was published.
        assert (await client.load("taskserv", "etcd"))["digest"] == published["etcd", "3.6.0"].tree_digest
        assert (await client.load("taskserv", "consul", "1.0.0"))["digest"] == published["consul", "1.0.0"].tree_digest
        assert (
            archives(service)
            == trees(service)
            == {
                published["etcd", "3.6.0"].digest,
                published["consul", "1.0.0"].digest,
            }
        )
        refused = [extension for extension, outcome, _ in audit_lines(caplog, "refused")]
        assert refused == [
            "taskserv:etcd:3.7.0",
            "taskserv:redis:7.0.0",
            "taskserv:redis:7.0.0",
            "taskserv:vault:1.0.0",
            "taskserv:vault:1.0.0",
            "taskserv:consul:1.1.0",
            "taskserv:consul:1.1.0",
        ]
        assert (await client.stats())["registry"]["refused"] == 7


# --- 9. a tree edited on the loader's disk ---------------------------------------------------------------------

EDITED = "export def check [] { {ok: false, error: 'edited on disk'} }\n"


async def test_a_tree_edited_on_disk_is_never_served(
    nats_server: NatsServer, nc: Client, tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.audit")
    config = plain_loader(nats_server.url, tmp_path, signer)
    original = "export def check [] { {ok: true} }\n"
    release = await publish_folder(nc, checkout(tmp_path, "etcd", "3.6.0", original), signer, config)
    registry = config.cache_dir / ".registry"
    tree = registry / "trees" / release.digest.removeprefix("sha256:") / "taskservs" / "etcd" / "3.6.0"
    kept = registry / "archives" / (release.digest.removeprefix("sha256:") + ".tar.gz")

    async with running_service(config):
        client = LoaderClient(nc, timeout=WAIT)
        assert (await client.load("taskserv", "etcd", "3.6.0"))["digest"] == release.tree_digest
    assert (tree / "mod.nu").read_text() == original and kept.is_file()

    # Edited while the loader is down: the next cold load unpacks the kept archive again.
    (tree / "mod.nu").write_text(EDITED)
    (tree / "planted.nu").write_text(EDITED)
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        served = await client.load("taskserv", "etcd", "3.6.0")  # Nushell ran `check`: the edited one fails it
        assert served["digest"] == release.tree_digest
        assert (Path(served["path"]) / "mod.nu").read_text() == original
        assert not (Path(served["path"]) / "planted.nu").exists()
        (again,) = audit_lines(caplog, "unpacked again")
        assert again[:2] == ("taskserv:etcd:3.6.0", "EDITED")
        assert (await client.stats())["registry"]["fetched"] == 0  # from the kept archive, checked again
        assert trees(service) == {release.digest}

    # The tree edited and the kept archive replaced too, by an archive of the edited tree: refused and removed.
    (tree / "mod.nu").write_text(EDITED)
    edited = checkout(tmp_path / "edited", "etcd", "3.6.0", EDITED)
    kept.write_bytes(pack(edited))
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        error = await refusal(client.load("taskserv", "etcd", "3.6.0"))
        assert error.code == "untrusted_extension"
        assert error.details["reason"] == (
            f"the kept archive's bytes are {digest_bytes(pack(edited))}, not the signed {release.digest}"
        )
        assert not kept.exists() and not tree.exists()  # never unpacked, and nothing of it kept
        assert trees(service) == set()
        # The next load fetches the archive from the registry again, and serves what was signed.
        served = await client.load("taskserv", "etcd", "3.6.0")
        assert served["digest"] == release.tree_digest
        assert (Path(served["path"]) / "mod.nu").read_text() == original
        assert (await client.stats())["registry"]["fetched"] == 1
