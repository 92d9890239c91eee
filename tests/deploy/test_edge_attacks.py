"""What an edge site cannot do to the hub, and what a forged mirror at a site does not do to its loaders
(deploy/edge's two files as shipped, over TLS: `edge.py`).

- No user of the shipped site, nor the user of a site whose operator allows it everything (linked with the leaf
  password), changes the hub's registry over the leaf link: every write to a bucket, every JetStream command on
  the buckets' streams (plainly, as the reply JetStream answers onto, as a push consumer's delivery subject)
  leaves the hub's buckets as they were. A leaf link that logs in as a user of the hub is refused. With the link
  in the registry's own account instead (the layout first tried), a site writes into a bucket.
- A site's admin may replace the mirrors with buckets of its own and fill them: no loader at the site accepts
  anything the trusted keys did not sign, and each refusal says which check failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer, free_port
from service.app.setup import set_up as setup_streams
from service.app.stream_settings import registry_targets
from service.contract.config import inbox_prefix_for
from service.core.folders import tree_digest
from service.registry import statements
from service.registry.archive import digest_bytes, pack
from service.registry.buckets import RegistryBuckets
from service.registry.index import Release, decode_record, encode_record, index_key
from service.registry.names import DEFAULT_NAMES
from service.registry.signing import Signer
from service.registry.statements import StateStatement
from tests.app.test_registry_cluster import published, source
from tests.conftest import WAIT, running_service, write_extension
from tests.deploy.edge import (
    ARCHIVES,
    HUB_PASSWORDS,
    INDEX,
    LEAF_PASSWORD,
    REG_API,
    ROOT,
    USERS,
    VARIABLES,
    Edge,
    Login,
    archives_mirrored,
    listen,
    login,
    mirrored,
    password,
    publish_at_hub,
    publisher_config,
    set_up,
    set_up_both,
    site_loader,
    site_loader_config,
)
from tests.registry import signed

pytestmark = pytest.mark.anyio


# --- no writes from the site into the hub -------------------------------------------------------------------------

HUB_API = "$JS.hub.API"
INTRUDER = "intruder"  # the one user of a site whose operator allows it everything
# What would change the hub's registry if it landed in the hub's REG: a bucket's write subjects, and JetStream's
# commands on the buckets' streams (the hub's own `keep` consumer on each, made before the attack, must stay), both
# as a site asks for the hub's (`$JS.hub.API`) and as they are named inside the hub's REG (`$JS.API`).
BUCKET_WRITES = [
    "$KV.extension-index.taskserv.intrusion",
    "$O.extension-archives.C.intrusion",
    "$O.extension-archives.M.aW50cnVzaW9u",
    f"{HUB_API}.$KV.extension-index.taskserv.intrusion",
]
WRITES = [
    *BUCKET_WRITES,
    *(
        f"{api}.{command}.{stream}{rest}"
        for api in (HUB_API, "$JS.API")
        for stream in (INDEX, ARCHIVES)
        for command, rest in (
            ("STREAM.PURGE", ""),
            ("STREAM.DELETE", ""),
            ("STREAM.UPDATE", ""),
            ("STREAM.MSG.DELETE", ""),
            ("CONSUMER.DELETE", ".keep"),
        )
    ),
]
BODIES = {"STREAM.UPDATE": b'{"name": "%s", "subjects": ["intrusion"], "max_msgs": 1}', "MSG.DELETE": b'{"seq": 1}'}


def body(subject: str) -> bytes:
    for command, made in BODIES.items():
        if f".{command}." in subject:
            return made % subject.rsplit(".", 1)[1].encode() if b"%s" in made else made
    return b'{"intrusion": true}'


async def hub_registry(admin: Login) -> dict[str, Any]:
    """What the hub's registry is: each bucket's configuration and state, and its consumers' names."""
    js = admin.nc.jetstream(timeout=WAIT)
    seen: dict[str, Any] = {}
    for stream in (INDEX, ARCHIVES):
        info = await js.stream_info(stream)
        state = info.state
        seen[stream] = (info.config.as_dict(), state.messages, state.bytes, state.first_seq, state.last_seq)
        listed = await admin.nc.request(f"$JS.API.CONSUMER.NAMES.{stream}", b"{}", timeout=WAIT)
        seen[f"{stream} consumers"] = set(msgspec.json.decode(listed.data)["consumers"] or ())
    return seen


async def attack(attacker: Login) -> None:
    """Every way to the hub's buckets over the link: each write and command plainly and as a request (but those
    named as inside the hub's REG: at a site `$JS.API` is the site's own JetStream); each named
    as the reply of a consumer made on the hub (JetStream answers onto the reply) and of a flow-control message;
    each as the delivery subject of a push consumer made on the hub, a bucket's with a subscription to it for
    interest."""
    nc = attacker.nc
    for n, target in enumerate(WRITES):
        if not target.startswith("$JS.API."):  # that, at a site, is the site's own JetStream
            await nc.publish(target, body(target))
            await nc.publish(target, body(target), reply=nc.new_inbox())
        if target in BUCKET_WRITES[:3]:
            # Interest in a bucket's subject, for a push consumer's deliveries. (A subscription to the hub's API
            # from a site is a protocol violation at the hub, which then closes the link.)
            with contextlib.suppress(nats.errors.Error):
                await nc.subscribe(target)
        for stream in (INDEX, ARCHIVES):
            for name, config in (
                (f"reply{n}", {"ack_policy": "none", "inactive_threshold": 10**10}),
                (f"deliver{n}", {"ack_policy": "none", "inactive_threshold": 10**10, "deliver_subject": target}),
            ):
                made = msgspec.json.encode({"stream_name": stream, "config": {"name": name, **config}})
                reply = target if name.startswith("reply") else nc.new_inbox()
                await nc.publish(f"{HUB_API}.CONSUMER.CREATE.{stream}.{name}", made, reply=reply)
            await nc.publish(f"$JS.FC.{stream}.intrusion.{n}", b"", reply=target)
    await nc.flush()


async def reaches_the_hub(attacker: Login) -> bool:
    """Whether a request this user sends over the link is answered at the hub: what a mirror asks, a consumer on
    the index, its answer expected under `$JSC.R.` as a mirror's is. Sent after an attack on the same connection,
    its answer says the attack has reached the hub."""
    nc = attacker.nc
    made = {"stream_name": INDEX, "config": {"name": "sentinel", "ack_policy": "none", "inactive_threshold": 10**10}}
    answers = await nc.subscribe(f"$JSC.R.{secrets.token_hex(8)}")
    try:
        await nc.publish(
            f"{HUB_API}.CONSUMER.CREATE.{INDEX}.sentinel", msgspec.json.encode(made), reply=answers.subject
        )
        answer = await answers.next_msg(timeout=2)
    except nats.errors.TimeoutError:
        return False
    finally:
        with contextlib.suppress(nats.errors.Error):
            await answers.unsubscribe()
    if "Status" in (answer.headers or {}):
        return False  # no responders (503): the hub's interest has not reached this site yet, or never will
    return bool(msgspec.json.decode(answer.data).get("type") == "io.nats.jetstream.api.v1.consumer_create_response")


ROGUE_CONF = """
listen: 127.0.0.1:-1
jetstream {{ store_dir: "{store}", domain: rogue }}
accounts {{ REG {{ jetstream: enabled, users = [{{user: {user}, password: {password}}}] }} }}
leafnodes {{ remotes = [{{url: "{url}", account: REG{tls}}}] }}
"""


@asynccontextmanager
async def rogue_site(folder: Path, url: str, ca: Path | None) -> AsyncIterator[NatsServer]:
    """A site of the intruder's own, linked to the hub at `url` (over TLS trusting `ca`, when given): every user of
    it may do anything."""
    conf = folder / "rogue.conf"
    tls = f', tls: {{ca_file: "{ca}"}}' if ca is not None else ""
    conf.write_text(ROGUE_CONF.format(store=folder / "rogue", user=INTRUDER, password=INTRUDER, url=url, tls=tls))
    server = await anyio.to_thread.run_sync(NatsServer(["-c", str(conf)]).start)
    try:
        yield server
    finally:
        await anyio.to_thread.run_sync(server.stop)


@pytest.mark.parametrize("user", [*USERS, INTRUDER])
async def test_no_user_of_a_site_changes_the_hub_s_registry_over_the_link(
    edge: Edge, tmp_path: Path, signer: Signer, user: str
) -> None:
    """Every user of the shipped site, and the user of a site that allows it everything (linked with the leaf
    password), tries every way to write, purge or delete the hub's buckets and the hub's own consumers. None
    reaches the hub but the intruder's mirror requests (it may make a consumer, as a mirror does); the hub's
    registry is as it was, and the site's mirrors still follow it."""
    await edge.link_up()
    await set_up_both(edge)
    publishing = publisher_config(edge, tmp_path)
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(edge, edge.hub, "publisher"))
        hub_admin = await stack.enter_async_context(login(edge, edge.hub, "admin"))
        await publish_at_hub(publisher, source(tmp_path / "3.5.0", "etcd", "3.5.0"), signer, publishing)
        for stream in (INDEX, ARCHIVES):
            keep = ConsumerConfig(durable_name="keep", ack_policy=AckPolicy.NONE)
            await hub_admin.nc.jetstream(timeout=WAIT).add_consumer(stream, keep)
        before = await hub_registry(hub_admin)

        if user == INTRUDER:
            url = f"nats-leaf://leaf_site:{LEAF_PASSWORD}@127.0.0.1:{edge.leaf_port}"
            rogue = await stack.enter_async_context(rogue_site(edge.folder, url, edge.ca))
            await anyio.to_thread.run_sync(lambda: rogue.wait_for_log("Leafnode connection created", 1, WAIT))
            attacker = Login(INTRUDER, await nats.connect(rogue.url, user=INTRUDER, password=INTRUDER))
            stack.push_async_callback(attacker.nc.close)
            with anyio.fail_after(WAIT):  # the link is made once the hub's interest has reached the rogue site
                while not await reaches_the_hub(attacker):
                    pass
        else:
            attacker = await stack.enter_async_context(login(edge, edge.site, user))
        await attack(attacker)
        assert await reaches_the_hub(attacker) is (user == INTRUDER)

        after = await hub_registry(hub_admin)
        for stream in (INDEX, ARCHIVES):
            assert after[stream] == before[stream], stream
            assert before[f"{stream} consumers"] <= after[f"{stream} consumers"]  # made ones come, none go
        # The site's mirrors still follow the hub.
        service = await stack.enter_async_context(site_loader(edge, tmp_path, "loader", signer))
        await publish_at_hub(publisher, source(tmp_path / "3.6.0", "etcd", "3.6.0"), signer, publishing)
        await mirrored(service, 2)


async def test_a_leaf_link_that_logs_in_as_a_user_of_the_hub_is_refused(edge: Edge) -> None:
    """Only the leafnodes block's users may link a site: a link with the hub admin's password is refused."""
    await edge.link_up()
    url = f"nats-leaf://admin:{password(edge.hub, 'admin')}@127.0.0.1:{edge.leaf_port}"
    async with rogue_site(edge.folder, url, edge.ca) as rogue:
        await anyio.to_thread.run_sync(lambda: rogue.wait_for_log("Authorization Violation", 1, WAIT))
        hub = edge.hub.log
        await anyio.to_thread.run_sync(lambda: hub.wait_for_log('authentication error - User "admin"', 1, WAIT))
        assert all(link["account"] == "EDGE" for link in hub.monitor("leafz")["leafs"])


# --- a mirror forged at the site ----------------------------------------------------------------------------------


async def archive_at_hub(buckets: RegistryBuckets, release: Release, folder: Path) -> bytes:
    into = folder / release.object.replace("/", "-")
    await buckets.archives.fetch(release.object, into, max_bytes=64 << 20)
    return into.read_bytes()


async def forge_the_site_s_registry(
    edge: Edge, tmp_path: Path, publisher: Login, site_admin: Login, forger: Login, stranger: Signer
) -> dict[str, str]:
    """What a site's admin and publisher can do: delete the mirrors, make buckets of their own in their place
    (`setup` without --site) and fill them with the hub's records and archives, but for forgeries. Returns the
    reason each forged version must be refused for, by version key."""
    for stream in (INDEX, ARCHIVES):
        assert await site_admin.nc.jetstream(timeout=WAIT).delete_stream(stream)
    code, _, errors = await set_up(edge, edge.site)
    assert code == 0, errors
    hub = RegistryBuckets(publisher.nc, timeout_s=WAIT, api_prefix=REG_API)
    site = RegistryBuckets(forger.nc, timeout_s=WAIT, api_prefix=REG_API)
    await hub.open()
    await site.open()
    records = {u.key: decode_record(u.value or b"") for u in await hub.index.entries()}
    copies = tmp_path / "copies"
    copies.mkdir()
    reasons: dict[str, str] = {}

    # etcd 3.6.0: other bytes under its archive's name.
    etcd = records[index_key("taskserv", "etcd")]
    for version, release in etcd.releases.items():
        data = await archive_at_hub(hub, release, copies)
        if version == "3.6.0":
            data = pack(write_extension(tmp_path / "forged", "taskserv", "etcd", "3.6.0", module=FORGED_MODULE))
            reasons["taskserv:etcd:3.6.0"] = f"its bytes are {digest_bytes(data)}, not the signed {release.digest}"
        await site.archives.put(release.object, data)
    # etcd 3.7.0: a release of the stranger's, in the record beside the trusted ones (the state unchanged).
    extra = write_extension(tmp_path / "forged", "taskserv", "etcd", "3.7.0")
    inserted = await stranger_release(site, stranger, extra, "etcd", "3.7.0")
    records[index_key("taskserv", "etcd")] = msgspec.structs.replace(
        etcd, releases={**etcd.releases, "3.7.0": inserted}
    )
    reasons["taskserv:etcd:3.7.0"] = "it is not in its extension's signed state"
    # redis 7.0.0: its state signed again by the stranger, the sequence higher.
    redis = records[index_key("taskserv", "redis")]
    assert redis.state is not None
    for release in redis.releases.values():
        await site.archives.put(release.object, await archive_at_hub(hub, release, copies))
    state = statements.read(redis.state, StateStatement)
    resigned = statements.seal(msgspec.structs.replace(state, sequence=state.sequence + 5), [stranger])
    records[index_key("taskserv", "redis")] = msgspec.structs.replace(redis, state=resigned)
    untrusted = f"its extension's signed state is not trusted: its signer {stranger.public_key} is not one of the keys"
    reasons["taskserv:redis:7.0.0"] = untrusted
    # vault 1.0.0: an extension the hub never had, all signed by the stranger.
    vault = await stranger_release(site, stranger, write_extension(tmp_path / "forged", "taskserv", "vault", "1.0.0"))
    records[index_key("taskserv", "vault")] = signed.record(stranger, [vault], name="vault")
    reasons["taskserv:vault:1.0.0"] = untrusted

    for key, record in records.items():
        await site.index.put(key, encode_record(record), 0)
    return reasons


FORGED_MODULE = "export def check [] { {ok: false, error: 'forged at the site'} }\n"


async def stranger_release(
    site: RegistryBuckets, stranger: Signer, folder: Path, name: str = "vault", version: str = "1.0.0"
) -> Release:
    """A release of `folder` signed by `stranger`, its archive in the site's bucket."""
    archive = pack(folder)
    made = signed.statement(
        name, version, digest=digest_bytes(archive), tree_digest=tree_digest(folder), size=len(archive)
    )
    release = signed.release(stranger, made)
    await site.archives.put(release.object, archive)
    return release


async def refused_for(client: LoaderClient, key: str, pinned: bool = True) -> dict[str, Any]:
    _, name, version = key.split(":")
    with pytest.raises(RemoteError) as caught:
        await client.load("taskserv", name, version if pinned else None)
    assert caught.value.code == "untrusted_extension", caught.value
    return caught.value.details


async def test_a_mirror_forged_at_the_site_makes_no_loader_accept_what_the_trusted_keys_did_not_sign(
    edge: Edge, tmp_path: Path, signer: Signer
) -> None:
    """The site's mirrors are untrusted transport. Its admin replaces them with buckets of the site's own holding
    the hub's records and archives, but: etcd 3.6.0's archive bytes replaced, a 3.7.0 of a stranger's key beside
    them, redis's state signed again by that key, and a vault all of that key's. A loader that followed the mirror
    before, and one started after, each refuse all of it, naming the check that failed; what the trusted key
    signed and the site kept intact loads; nothing forged is announced."""
    await edge.link_up()
    await set_up_both(edge)
    publishing = publisher_config(edge, tmp_path)
    stranger = signed.key()
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(login(edge, edge.hub, "publisher"))
        site_admin = await stack.enter_async_context(login(edge, edge.site, "admin"))
        forger = await stack.enter_async_context(login(edge, edge.site, "publisher"))
        orchestrator = await stack.enter_async_context(login(edge, edge.site, "orchestrator"))
        for name, version in (("etcd", "3.5.0"), ("etcd", "3.6.0"), ("redis", "7.0.0")):
            await publish_at_hub(publisher, source(tmp_path / name / version, name, version), signer, publishing)
        events = await listen(orchestrator)
        client = LoaderClient(orchestrator.nc, timeout=WAIT)
        # A mirror takes no write at the site: it has no subjects, and the link carries none to the hub.
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await forger.nc.request("$KV.extension-index.taskserv.etcd", b"{}", timeout=2)

        # Both mirrors hold the three releases, archives included, before the loader that follows them starts: it
        # reads them all at its first reading (nothing is news, so nothing is loaded on its own ahead of the
        # forgery), and each archive is at the site (the two mirrors catch up each on its own). The scout that waits
        # for that may itself announce the genuine releases (its first reading may come before the mirror has them).
        hub_admin = await stack.enter_async_context(login(edge, edge.hub, "admin"))
        async with site_loader(edge, tmp_path, "scout", signer) as scout:
            await mirrored(scout, 3)
            await archives_mirrored(scout, hub_admin.nc)
        judged: set[str] = set()  # the loaders whose announcements are judged: the one before and the one after
        async with site_loader(edge, tmp_path, "before", signer) as before:
            judged.add(before.manager.instance_id)
            await mirrored(before, 3)
            assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"
            reasons = await forge_the_site_s_registry(edge, tmp_path, publisher, site_admin, forger, stranger)
            await mirrored(before, 5)  # the site's own buckets read: etcd x3, redis, vault
            await refusals_name_the_check(client, reasons)
            assert (await client.stats())["registry"]["mirror"] is None  # no mirrors at this site any more

        async with running_service(site_loader_config(edge, tmp_path, "after", signer)) as after:
            judged.add(after.manager.instance_id)
            await mirrored(after, 5)
            await refusals_name_the_check(client, reasons)
            assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"  # fetched
        assert [(who, version) for who, version in published(events) if who in judged] == []


async def refusals_name_the_check(client: LoaderClient, reasons: dict[str, str]) -> None:
    """Each forged version refused when pinned, and where it would be chosen, with the reason of its check."""
    for key, reason in reasons.items():
        details = await refused_for(client, key)
        assert (details["version"], details["reason"][: len(reason)]) == (key.rsplit(":", 1)[1], reason), details
    # `latest` of etcd is 3.6.0, whose signed digest its bytes miss: refused, never 3.7.0 nor 3.5.0 instead.
    details = await refused_for(client, "taskserv:etcd:3.6.0", pinned=False)
    assert details["version"] == "3.6.0" and details["reason"] == reasons["taskserv:etcd:3.6.0"]
    assert (await client.load("taskserv", "etcd", "3.5.0"))["metadata"]["version"] == "3.5.0"


# --- why the links land in EDGE -----------------------------------------------------------------------------------

# The leaf user of the layout first tried: in REG itself, allowed to publish only what a mirror asks for and to
# receive only what it is sent.
LEAF_IN_REG = """
LEAF_SITE = {
  publish: {allow: [
    "$JS.hub.API.CONSUMER.CREATE.KV_extension-index", "$JS.hub.API.CONSUMER.CREATE.KV_extension-index.>",
    "$JS.hub.API.CONSUMER.CREATE.OBJ_extension-archives", "$JS.hub.API.CONSUMER.CREATE.OBJ_extension-archives.>",
    "$JS.FC.KV_extension-index.>", "$JS.FC.OBJ_extension-archives.>"
  ]}
  subscribe: {allow: ["$JS.M.>", "$JSC.R.>"]}
}
"""
ADMIN_LINE = "      {user: admin, password: $NATS_ADMIN_PASSWORD, permissions: $ADMIN}"


def hub_with_the_leaf_user_in_reg(folder: Path, leaf_port: int) -> Path:
    """nats.conf with that user in REG, a leaf-node listener without a block of its own (so a link logs in as
    one of the accounts' users), the JetStream domain hub; on free loopback ports."""
    text = (ROOT / "nats.conf").read_text()
    assert ADMIN_LINE in text and "\naccounts {" in text
    text = text.replace(
        ADMIN_LINE, f"{ADMIN_LINE}\n      {{user: leaf_site, password: {LEAF_PASSWORD}, permissions: $LEAF_SITE}}"
    )
    text = text.replace("\naccounts {", f"\n{LEAF_IN_REG}\naccounts {{", 1)
    text = re.sub(r"^(listen|http): 127\.0\.0\.1:\d+", r"\1: 127.0.0.1:-1", text, flags=re.M)
    text += (
        f'\njetstream {{ store_dir: "{folder / "hub"}", domain: hub }}\nleafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n'
    )
    conf = folder / "hub-reg.conf"
    conf.write_text(text)
    return conf


async def test_a_site_link_in_the_registry_s_own_account_lets_a_site_write_the_hub_s_buckets(tmp_path: Path) -> None:
    """Why nats.conf has EDGE. With the site's link in REG, allowed nothing but a mirror's requests, a site still
    names a bucket's subject as the reply of its consumer-create request: JetStream's answer is published in REG
    onto that subject, and the bucket stores it."""
    leaf_port = free_port()
    conf = hub_with_the_leaf_user_in_reg(tmp_path, leaf_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")} | HUB_PASSWORDS
    async with AsyncExitStack() as stack:
        hub = await anyio.to_thread.run_sync(NatsServer(["-c", str(conf)], env=env).start)
        stack.callback(hub.stop)
        admin = await nats.connect(
            hub.url, user="admin", password=HUB_PASSWORDS[VARIABLES["admin"]], inbox_prefix=inbox_prefix_for("admin")
        )
        stack.push_async_callback(admin.close)
        await setup_streams(admin, registry_targets(DEFAULT_NAMES))
        js = admin.jetstream(timeout=WAIT)
        rogue = await stack.enter_async_context(
            rogue_site(tmp_path, f"nats-leaf://leaf_site:{LEAF_PASSWORD}@127.0.0.1:{leaf_port}", None)
        )
        intruder = Login(INTRUDER, await nats.connect(rogue.url, user=INTRUDER, password=INTRUDER))
        stack.push_async_callback(intruder.nc.close)
        with anyio.fail_after(WAIT):
            while not await reaches_the_hub(intruder):
                pass
        before = (await js.stream_info(INDEX)).state.last_seq

        made = msgspec.json.encode({"stream_name": INDEX, "config": {"name": "r", "ack_policy": "none"}})
        await intruder.nc.publish(f"{HUB_API}.CONSUMER.CREATE.{INDEX}.r", made, reply=BUCKET_WRITES[0])
        with anyio.fail_after(WAIT):
            while (await js.stream_info(INDEX)).state.last_seq == before:
                pass
        stored = await js.get_last_msg(INDEX, BUCKET_WRITES[0])
        assert msgspec.json.decode(stored.data or b"")["type"] == "io.nats.jetstream.api.v1.consumer_create_response"
