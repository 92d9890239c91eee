"""`extension-loader setup`, the only maker of streams: it creates the events stream and the registry's buckets,
changes nothing the second time, refuses a change that would lose data unless forced, gives each the copies
asked for on a cluster, and is what `extension-loader dev` runs before the service. Real nats-servers (one, or
three clustered), the command as a person runs it."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from service.app.cli.serving import DEV_PASSWORDS
from service.app.client import LoaderClient
from service.app.natsserver import NatsCluster, NatsServer, free_port
from service.app.stream_settings import changes as changes_of
from service.app.stream_settings import events_target
from tests.app.test_cli import CLI, cli, run
from tests.conftest import EXAMPLES, NU, WAIT, dev_running

pytestmark = pytest.mark.anyio

STREAMS = ("EXTENSION_EVENTS", "KV_extension-index", "OBJ_extension-archives")
EVENTS = ["extensions.loaded", "extensions.unloaded"]
CREATED = [
    "events stream EXTENSION_EVENTS: created (subjects extensions.loaded, extensions.unloaded; 1 replica)",
    "index bucket extension-index: created (subjects $KV.extension-index.>; 1 replica)",
    "archive bucket extension-archives: created (subjects $O.extension-archives.C.>, $O.extension-archives.M.>; "
    "1 replica)",
]
UNCHANGED = [
    "events stream EXTENSION_EVENTS: unchanged",
    "index bucket extension-index: unchanged",
    "archive bucket extension-archives: unchanged",
]


async def configs(nc: Client) -> dict[str, StreamConfig]:
    js = nc.jetstream()
    return {stream: (await js.stream_info(stream)).config for stream in STREAMS}


async def test_setup_creates_the_events_stream_and_both_buckets(nats_server: NatsServer, nc: Client) -> None:
    code, out, err = await cli(nats_server, "setup")
    assert (code, out.splitlines(), err) == (0, CREATED, "")
    made = await configs(nc)
    events, index, archives = (made[s] for s in STREAMS)
    assert sorted(events.subjects or []) == EVENTS
    for config in made.values():
        assert config.retention == RetentionPolicy.LIMITS and config.storage == StorageType.FILE
        assert not config.max_age and config.num_replicas == 1
        assert config.max_msgs == config.max_bytes == -1
    assert index.max_msgs_per_subject == 16 and index.allow_direct and index.deny_delete
    assert archives.max_msgs_per_subject == -1 and archives.allow_direct
    # What the runtime binds to: nats-py's Key-Value and Object Store take them as their own.
    await nc.jetstream().key_value("extension-index")
    await nc.jetstream().object_store("extension-archives")


async def test_setup_twice_changes_nothing_and_says_so(nats_server: NatsServer, nc: Client) -> None:
    assert (await cli(nats_server, "setup"))[0] == 0
    before = await configs(nc)
    code, out, err = await cli(nats_server, "setup")
    assert (code, out.splitlines(), err) == (0, UNCHANGED, "")
    assert await configs(nc) == before


async def test_a_change_that_would_lose_data_is_refused_without_force_and_applied_with_it(
    nats_server: NatsServer, nc: Client
) -> None:
    """Someone raised the index's history by hand: taking it back to 16 would delete older revisions. Refused
    (and nothing changed, not even what loses nothing beside it), until --force."""
    assert (await cli(nats_server, "setup"))[0] == 0
    js = nc.jetstream()
    index = (await js.stream_info("KV_extension-index")).config
    index.max_msgs_per_subject = 64
    index.allow_direct = False
    await js.update_stream(index)

    code, out, err = await cli(nats_server, "setup")
    assert code == 1, (out, err)
    assert out.splitlines()[0] == UNCHANGED[0] and out.splitlines()[2] == UNCHANGED[2]
    assert out.splitlines()[1] == (
        "index bucket extension-index: refused (history 64 -> 16: messages beyond it would be deleted; "
        "also direct gets off -> on; --force applies it)"
    )
    assert err.strip() == "refused 1 of 3: left as they were"
    kept = (await js.stream_info("KV_extension-index")).config
    assert (kept.max_msgs_per_subject, kept.allow_direct) == (64, False)

    code, out, err = await cli(nats_server, "setup", "--force")
    assert code == 0, err
    assert out.splitlines()[1] == "index bucket extension-index: updated (history 64 -> 16; direct gets off -> on)"
    applied = (await js.stream_info("KV_extension-index")).config
    assert (applied.max_msgs_per_subject, applied.allow_direct) == (16, True)
    assert (await cli(nats_server, "setup"))[1].splitlines() == UNCHANGED


async def test_a_time_to_live_or_other_subjects_set_by_hand_are_set_back_for_they_lose_nothing(
    nats_server: NatsServer, nc: Client
) -> None:
    """A time to live on the event log (set by hand) deletes events; taking it away, and setting the subjects
    back to exactly the event subjects, loses nothing: no --force needed."""
    await nc.jetstream().add_stream(
        StreamConfig(name="EXTENSION_EVENTS", subjects=["extensions.loaded", "other.events"], max_age=3600)
    )
    code, out, err = await cli(nats_server, "setup")
    assert code == 0, err
    assert out.splitlines()[0] == (
        "events stream EXTENSION_EVENTS: updated (max_age 3600s -> none; "
        "subjects extensions.loaded, other.events -> extensions.loaded, extensions.unloaded)"
    )
    events = (await nc.jetstream().stream_info("EXTENSION_EVENTS")).config
    assert (events.max_age, sorted(events.subjects or [])) == (0, EVENTS)


async def test_a_storage_type_is_never_changed_not_even_with_force(nats_server: NatsServer, nc: Client) -> None:
    await nc.jetstream().add_stream(StreamConfig(name="EXTENSION_EVENTS", subjects=EVENTS, storage=StorageType.MEMORY))
    for force in ((), ("--force",)):
        code, out, _ = await cli(nats_server, "setup", *force)
        assert code == 1
        assert out.splitlines()[0] == (
            "events stream EXTENSION_EVENTS: refused (storage memory -> file: JetStream cannot change a stream's "
            "storage in place: delete the stream (losing what it holds) and run setup again)"
        )
    assert (await nc.jetstream().stream_info("EXTENSION_EVENTS")).config.storage == StorageType.MEMORY


async def test_a_sealed_stream_is_refused_with_what_to_do(nats_server: NatsServer, nc: Client) -> None:
    """A sealed stream takes no more writes and cannot be unsealed: setup says so, even with --force."""
    assert (await cli(nats_server, "setup"))[0] == 0
    js = nc.jetstream()
    sealed = (await js.stream_info("EXTENSION_EVENTS")).config
    sealed.sealed = True
    await js.update_stream(sealed)
    for force in ((), ("--force",)):
        code, out, _ = await cli(nats_server, "setup", *force)
        assert code == 1
        assert out.splitlines()[0] == (
            "events stream EXTENSION_EVENTS: refused (sealed: nothing more can be written to it, and a stream cannot "
            "be unsealed; delete it (losing what it holds) and run setup again)"
        )
        assert out.splitlines()[1:] == UNCHANGED[1:]


def test_what_a_change_would_lose() -> None:
    """The rules, for every setting: a time to live (or a shorter one), a retention other than limits, a smaller
    limit, fewer copies and another storage lose data; their opposites do not."""
    target = events_target("EXTENSION_EVENTS", EVENTS)
    stream = StreamConfig(name="EXTENSION_EVENTS", subjects=EVENTS, retention=RetentionPolicy.LIMITS)
    stream.storage, stream.num_replicas = StorageType.FILE, 3

    def losses(replicas: int | None = None, **wanted: Any) -> dict[str, str | None]:
        changed = dataclasses.replace(target, settings={**target.settings, **wanted})
        return {c.name: c.loss for c in changes_of(changed, stream, replicas)}

    assert losses() == {}
    lossy: list[dict[str, Any]] = [
        {"max_age": 60.0},
        {"retention": RetentionPolicy.INTEREST},
        {"retention": RetentionPolicy.WORK_QUEUE},
        {"max_msgs": 1000},
        {"max_bytes": 10**9},
        {"max_msgs_per_subject": 1},
        {"storage": StorageType.MEMORY},
    ]
    for wanted in lossy:
        (name,) = wanted
        assert losses(**wanted)[name] is not None, wanted
    assert losses(replicas=1) == {"replicas": "fewer copies: a server lost takes more with it"}
    assert losses(replicas=5) == {"replicas": None}
    stream.max_age, stream.max_msgs = 60.0, 1000
    changed = losses(max_age=30.0, max_msgs=2000)
    assert changed["max_age"] is not None and changed["max_msgs"] is None  # a shorter ttl loses; more room not
    assert losses() == {"max_age": None, "max_msgs": None}  # no ttl, no limit, where there were: nothing lost


async def test_replicas_on_a_three_node_cluster(js_cluster: NatsCluster) -> None:
    """--replicas 3 makes every stream R3; without --replicas a stream keeps its copies; fewer is refused
    unless forced."""
    node = js_cluster.servers[0]
    code, out, err = await cli(node, "setup", "--replicas", "3")
    assert code == 0, err
    assert [line.rsplit("; ", 1)[1] for line in out.splitlines()] == ["3 replicas)"] * 3
    async with connected(node.url) as nc:
        for stream, config in (await configs(nc)).items():
            assert config.num_replicas == 3, stream
    await anyio.to_thread.run_sync(js_cluster.wait_settled, STREAMS)
    assert (await cli(node, "setup"))[1].splitlines() == UNCHANGED
    code, out, _ = await cli(js_cluster.servers[1], "setup", "--replicas", "1")
    assert code == 1
    assert out.splitlines()[0] == (
        "events stream EXTENSION_EVENTS: refused (replicas 3 -> 1: fewer copies: a server lost takes more with it; "
        "--force applies it)"
    )
    code, out, err = await cli(js_cluster.servers[1], "setup", "--replicas", "1", "--force")
    assert code == 0, err
    assert out.splitlines()[2] == "archive bucket extension-archives: updated (replicas 3 -> 1)"
    async with connected(node.url) as nc:
        assert {c.num_replicas for c in (await configs(nc)).values()} == {1}


# --- exit codes ---------------------------------------------------------------------------------------------

REFUSED_USER = """
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{user: admin, password: admin1}}
    {{user: loader, password: loader1, permissions: {{
      publish: {{allow: ["$JS.API.STREAM.INFO.>"]}}
      subscribe: {{allow: ["_INBOX.loader.>"]}}
    }}}}
  ]
}}
"""


async def test_exit_codes(nats_server: NatsServer, tmp_path: Path) -> None:
    """2: a bad configuration; 4: no server, no JetStream at the prefix, or a user that may not manage
    streams (said at once, not after a time-out); nothing is made by a refused user."""
    code, _, err = await cli(nats_server, "setup", "--set", 'events.stream="no spaces"')
    assert code == 2 and "events.stream" in err
    code, _, err = await run("setup", "--server", "nats://127.0.0.1:1")
    assert code == 4 and "nats://127.0.0.1:1" in err
    code, _, err = await cli(nats_server, "setup", "--set", 'registry.api_prefix="$JS.reg.API"')
    assert code == 4
    assert "no responders on $JS.reg.API.STREAM.INFO.KV_extension-index" in err
    assert "is the API prefix right (events.api_prefix, registry.api_prefix)" in err

    conf = tmp_path / "users.conf"
    conf.write_text(REFUSED_USER.format(store=tmp_path / "users-js"))
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        with anyio.fail_after(WAIT / 2):  # well inside the 10 s a JetStream call may take
            code, out, err = await cli(server, "setup", "--user", "loader", "--password", "loader1")
        assert (code, out) == (4, "")
        assert 'permissions violation for publish to "$js.api.stream.create.extension_events"' in err
        assert "hint: setup needs a user that may manage streams (admin)" in err
        assert "registry.api_prefix" not in err  # the prefix is not what is wrong: the user is
        async with connected(server.url, user="admin", password="admin1") as admin:
            assert await admin.jetstream().streams_info() == []
        code, out, err = await cli(server, "setup", "--user", "admin", "--password", "admin1")
        assert code == 0 and out.splitlines() == CREATED, err


async def test_setup_runs_as_admin_unless_told_otherwise(nats_server: NatsServer, tmp_path: Path) -> None:
    """Without --user: `admin`, with $NATS_PASSWORD, else $NATS_ADMIN_PASSWORD (the variable nats.conf reads)."""
    conf = tmp_path / "users.conf"
    conf.write_text(REFUSED_USER.format(store=tmp_path / "users-js"))
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
        for variables, expected in [({"NATS_ADMIN_PASSWORD": "wrong"}, 4), ({"NATS_ADMIN_PASSWORD": "admin1"}, 0)]:
            with anyio.fail_after(WAIT):
                done = await anyio.run_process(
                    [CLI, "setup", "--server", server.url], env={**env, **variables}, check=False
                )
            assert done.returncode == expected, done.stderr.decode()
        assert done.stdout.decode().splitlines() == CREATED


async def test_the_service_before_setup_exits_3_naming_setup(nats_server: NatsServer, tmp_path: Path) -> None:
    code, _, err = await run(
        "serve",
        "--nats-url",
        nats_server.url,
        *("--set", "events.jetstream=true"),
        *("--set", f'nushell.path="{NU}"', "--set", f"orchestrator.paths.data_dir={tmp_path / 'data'}"),
        *("--set", "orchestrator.extensions.auto_load=false"),
    )
    assert code == 3
    assert "JetStream stream 'EXTENSION_EVENTS' (events.stream) is not there: run `extension-loader setup`" in err


# --- `extension-loader dev` ---------------------------------------------------------------------------------

DEV_CONF = """
listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{user: admin, password: $NATS_ADMIN_PASSWORD}}
    {{user: loader, password: $NATS_LOADER_PASSWORD}}
  ]
}}
"""


async def test_dev_runs_setup_as_admin_before_the_service(tmp_path: Path) -> None:
    """`make run`: the streams made by setup as admin (with the development password), then the service, which
    publishes its events through JetStream into the stream setup made."""
    port = free_port()
    (tmp_path / "dev.conf").write_text(DEV_CONF.format(port=port, store=tmp_path / "jetstream"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EXTENSION_LOADER__"))}
    url = f"nats://127.0.0.1:{port}"
    argv = [
        *(sys.executable, "-m", "service", "dev", "--nats-config", "dev.conf", "--nats-url", url),
        *("--set", f'orchestrator.extensions.paths=["{EXAMPLES}"]', "--set", f'nushell.path="{NU}"'),
        *("--set", "orchestrator.extensions.auto_load=false", "--set", "events.jetstream=true"),
    ]
    async with dev_running(argv, env=env, cwd=tmp_path) as run:
        assert [f"setup: {line}" for line in CREATED] == run.stdout.decode().splitlines()[:3]
        async with connected(url, user="admin", password=DEV_PASSWORDS["NATS_ADMIN_PASSWORD"]) as nc:
            await LoaderClient(nc, timeout=WAIT).load("provider", "local")
            stored = await nc.jetstream().stream_info("EXTENSION_EVENTS")
            assert stored.state.messages == 1
    assert run.code == 0, run.stderr.decode()
    assert "NATS_ADMIN_PASSWORD" in run.stderr.decode().splitlines()[0]  # said to be a development password


async def test_dev_stops_when_setup_cannot_run_as_admin(tmp_path: Path) -> None:
    """A nats.conf without `admin`: dev says so and stops its nats-server; the service never starts."""
    port = free_port()
    conf = DEV_CONF.replace("    {{user: admin, password: $NATS_ADMIN_PASSWORD}}\n", "")
    (tmp_path / "dev.conf").write_text(conf.format(port=port, store=tmp_path / "jetstream"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "EXTENSION_LOADER__"))}
    argv = [
        sys.executable,
        "-m",
        "service",
        "dev",
        "--nats-config",
        "dev.conf",
        "--nats-url",
        f"nats://127.0.0.1:{port}",
    ]
    with anyio.fail_after(WAIT):
        done = await anyio.run_process(argv, env=env, cwd=tmp_path, check=False)
    err = done.stderr.decode()
    assert done.returncode == 4, err
    assert "extension-loader: setup as admin failed: nats: 'Authorization Violation'" in err
    assert b"serving" not in done.stdout
    with pytest.raises(ConnectionRefusedError):  # its nats-server is gone
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


# --- helpers ------------------------------------------------------------------------------------------------


@asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Client]:
    nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, **options)
    try:
        yield nc
    finally:
        await nc.close()
