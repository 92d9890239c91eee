"""Every subject of the contract against a real nats-server, real Nushell and real extension folders."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import msgpack
import msgspec
import pytest
from nats.aio.client import Client

from service.app.client import LoaderClient, RemoteError
from service.app.natsserver import NatsServer
from service.wire.service import ExtensionService
from tests.conftest import KUBERNETES_1_28, NU, WAIT, EventLog, Gate, make_config, running_service, write_extension

pytestmark = pytest.mark.anyio

MICRO_SCHEMAS = Path(__file__).parent / "schemas" / "nats-micro-v1"
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def digest_of(folder: Path) -> str:
    """The loader's digest, recomputed: sha256 over `<relpath>\\t<sha256 of file>\\n`, sorted by path."""
    lines = []
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        lines.append(f"{path.relative_to(folder).as_posix()}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


async def raw_request(nc: Client, subject: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await nc.request(subject, payload, timeout=WAIT, headers=headers)


# --- load ---


async def test_load_cold_then_cached(client: LoaderClient, events: EventLog, config: Any) -> None:
    ext = await client.load("taskserv", "kubernetes", "1.28.0")
    assert ext["metadata"] == KUBERNETES_1_28
    copy = Path(ext["path"])
    assert copy == config.cache_dir / "taskserv" / "kubernetes" / "1.28.0"
    assert (copy / "mod.nu").is_file()
    assert ext["digest"] == digest_of(copy)
    (loaded,) = await events.wait_for(1, ".loaded")
    assert loaded["reason"] == "load" and loaded["cold"] is True
    assert loaded["extension"] == ext
    assert loaded["duration_ms"] > 0

    again = await client.load("taskserv", "kubernetes", "1.28.0")
    assert again == ext
    stats = await client.stats()
    assert stats["cache"]["hits"] == 1 and stats["cache"]["misses"] == 1
    assert stats["loads"] == {"total": 2, "cold": 1, "failed": 0, "coalesced": 0}
    # A cached answer publishes nothing: the only loaded event is still the first one.
    await client.load("taskserv", "containerd")
    await events.wait_for(2, ".loaded")
    assert [e["extension"]["metadata"]["name"] for e in events.bodies(".loaded")] == [
        "kubernetes",
        "containerd",
    ]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, "1.29.2"),
        ("latest", "1.29.2"),
        ("^1.28", "1.29.2"),
        ("~1.28.0", "1.28.0"),
        (">=1.27,<1.29", "1.28.0"),
        ("1.28.*", "1.28.0"),
        ("1.30.0-rc.1", "1.30.0-rc.1"),
        (">=1.30.0-rc.1", "1.30.0-rc.1"),
    ],
)
async def test_version_resolution(client: LoaderClient, requested: str | None, expected: str) -> None:
    ext = await client.load("taskserv", "kubernetes", requested)
    assert ext["metadata"]["version"] == expected


async def test_type_accepts_plural_and_any_case(client: LoaderClient) -> None:
    ext = await client.load("TaskServs", "etcd")
    assert ext["metadata"]["extension_type"] == "taskserv"


async def test_one_version_layout(client: LoaderClient) -> None:
    ext = await client.load("taskserv", "containerd")
    assert ext["metadata"]["version"] == "1.7.13"
    assert Path(ext["path"]).name == "1.7.13"


async def test_simultaneous_cold_requests_share_one_nushell_run(client: LoaderClient, events: EventLog) -> None:
    results: list[Any] = []

    async def one() -> None:
        results.append(await client.load("provider", "aws", "2.0.0"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert len(results) == 20 and all(r == results[0] for r in results)
    stats = await client.stats()
    assert stats["loads"]["cold"] == 1
    assert stats["loads"]["coalesced"] + stats["cache"]["hits"] == 19
    assert len(await events.wait_for(1, ".loaded")) == 1


async def test_with_dependencies_loads_depth_first(client: LoaderClient, events: EventLog) -> None:
    ext = await client.load("cluster", "buildkit", with_dependencies=True)
    assert ext["metadata"]["name"] == "buildkit"
    loaded = await events.wait_for(6, ".loaded")
    order = [f"{e['extension']['metadata']['extension_type']}:{e['extension']['metadata']['name']}" for e in loaded]
    assert order[-1] == "cluster:buildkit"
    assert order.index("taskserv:containerd") < order.index("taskserv:kubernetes")
    assert order.index("taskserv:etcd") < order.index("taskserv:kubernetes")
    listed = {e["metadata"]["name"] for e in await client.list()}
    assert {"buildkit", "kubernetes", "containerd", "etcd"} <= listed


# --- errors ---


async def expect_error(call: Any, code: str) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def test_not_found_suggests_close_names(client: LoaderClient) -> None:
    err = await expect_error(client.load("taskserv", "kubernets"), "not_found")
    assert err.details["suggestions"] == ["kubernetes"]


async def test_version_not_found_lists_versions_newest_first(client: LoaderClient) -> None:
    err = await expect_error(client.load("taskserv", "kubernetes", "^2"), "version_not_found")
    assert err.details == {"requested": "^2", "available": ["1.30.0-rc.1", "1.29.2", "1.28.0"]}


async def test_bad_constraint_is_invalid_request(client: LoaderClient) -> None:
    err = await expect_error(client.load("taskserv", "kubernetes", ">=x"), "invalid_request")
    assert err.details["field"] == "version"


async def test_error_headers_and_micro_error_count(nc: Client, service: ExtensionService) -> None:
    reply = await raw_request(nc, "extensions.load", {"extension_type": "taskserv", "name": "nope"})
    assert reply.headers["Nats-Service-Error-Code"] == "404"
    assert "nope" in reply.headers["Nats-Service-Error"]
    assert reply.headers["Content-Type"] == "application/json"
    body = json.loads(reply.data)
    assert body["success"] is False and body["error"]["code"] == "not_found"
    stats = json.loads((await nc.request("$SRV.STATS.extension-loader", b"", timeout=WAIT)).data)
    load = next(e for e in stats["endpoints"] if e["name"] == "load")
    assert load["num_requests"] == 1 and load["num_errors"] == 1
    assert "nope" in load["last_error"]


async def test_reply_over_max_payload_is_an_error_cold_and_cached(tmp_path: Path) -> None:
    """A reply the server would refuse is a load_failed error, whether the load ran Nushell or came from the
    cache (the cached answer takes its own, shorter path); the service keeps serving after it."""
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 4096\n")  # still room for the $SRV.STATS reply of every endpoint
    root = tmp_path / "ext"
    long = "x" * 5000
    write_extension(
        root,
        "taskserv",
        "wordy",
        "1.0.0",
        metadata=f'name = "wordy"\nversion = "1.0.0"\ndescription = "{long}"\ntype = "taskserv"\n',
    )
    write_extension(root, "taskserv", "terse", "1.0.0")
    with NatsServer(["-c", str(conf), "-a", "127.0.0.1", "-p", "-1"]) as server:
        config = make_config(server.url, tmp_path, roots=[root])
        nc = Client()
        await nc.connect(server.url)
        try:
            async with running_service(config):
                c = LoaderClient(nc, timeout=WAIT)
                for _ in range(2):
                    err = await expect_error(c.load("taskserv", "wordy", "1.0.0"), "load_failed")
                    assert "max_payload (4096 bytes)" in err.message
                stats = await c.stats()
                assert stats["cache"]["hits"] == 1 and stats["cache"]["misses"] == 1
                assert (await c.load("taskserv", "terse", "1.0.0"))["metadata"]["name"] == "terse"
                micro = json.loads((await nc.request("$SRV.STATS.extension-loader", b"", timeout=WAIT)).data)
                load = next(e for e in micro["endpoints"] if e["name"] == "load")
                assert load["num_requests"] == 3 and load["num_errors"] == 2
        finally:
            await nc.close()


async def test_a_defect_on_the_cached_path_is_a_500_reply_and_does_not_hold_up_stop(
    nc: Client, config: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (the encoder fails once an extension is cached): the cached answer's short path turns
    the exception into an internal-error reply as the general path does, counts it, and leaves nothing in
    flight, so stopping does not wait out the drain time."""
    body = {"extension_type": "taskserv", "name": "etcd", "version": "3.5.12"}
    async with running_service(config):
        assert json.loads((await raw_request(nc, "extensions.load", body)).data)["success"] is True

        def broken(data: Any, fmt: Any) -> bytes:
            raise RuntimeError("encoder defect")

        monkeypatch.setattr("service.wire.codec.success", broken)
        reply = await raw_request(nc, "extensions.load", body)
        monkeypatch.undo()
        assert reply.headers["Nats-Service-Error-Code"] == "500"
        error = json.loads(reply.data)["error"]
        assert error["code"] == "load_failed" and "RuntimeError" in error["message"]
        assert "encoder defect" not in reply.data.decode()  # no internals reach the client
        micro = json.loads((await nc.request("$SRV.STATS.extension-loader", b"", timeout=WAIT)).data)
        load = next(e for e in micro["endpoints"] if e["name"] == "load")
        assert load["num_requests"] == 2 and load["num_errors"] == 1
        assert json.loads((await raw_request(nc, "extensions.load", body)).data)["success"] is True
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


async def test_dependency_errors(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "app", "1.0.0", dependencies=["ghost"])
    write_extension(root, "taskserv", "old", "1.0.0", dependencies=["lib@^2"])
    write_extension(root, "taskserv", "lib", "1.0.0")
    write_extension(root, "taskserv", "lib", "1.5.0")
    write_extension(root, "taskserv", "ping", "1.0.0", dependencies=["pong"])
    write_extension(root, "taskserv", "pong", "1.0.0", dependencies=["taskserv:ping"])
    write_extension(root, "cluster", "deep", "1.0.0", dependencies=["app"])
    config = make_config(nats_server.url, tmp_path, roots=[root])
    reply_schema = json.loads((SCHEMAS / "load.reply.json").read_text())
    async with running_service(config):
        c = LoaderClient(nc, timeout=WAIT)
        err = await expect_error(c.load("taskserv", "app"), "dependency_error")
        ghost: dict[str, Any] = {"dependency": "taskserv:ghost", "constraint": None, "available": []}
        assert err.details == {"missing": [ghost], "cycle": [], "path": ["taskserv:app", "taskserv:ghost"]}
        assert err.message == (
            "taskserv app 1.0.0: dependency error (via taskserv:app -> taskserv:ghost): taskserv:ghost is not available"
        )
        err = await expect_error(c.load("taskserv", "old"), "dependency_error")
        lib = {"dependency": "taskserv:lib", "constraint": "^2", "available": ["1.5.0", "1.0.0"]}
        assert err.details == {"missing": [lib], "cycle": [], "path": ["taskserv:old", "taskserv:lib"]}
        assert err.message == (
            "taskserv old 1.0.0: dependency error (via taskserv:old -> taskserv:lib): "
            "taskserv:lib has no version matching ^2 (available: 1.5.0, 1.0.0)"
        )
        err = await expect_error(c.load("taskserv", "ping"), "dependency_error")
        assert err.details["cycle"] == ["taskserv:ping", "taskserv:pong", "taskserv:ping"]
        assert err.details["missing"] == []
        err = await expect_error(c.load("cluster", "deep"), "dependency_error")
        assert err.details["path"] == ["cluster:deep", "taskserv:app", "taskserv:ghost"]
        assert err.details["missing"] == [ghost]
        # The reply as it is on the wire is what the published schema describes for a dependency_error.
        reply = await raw_request(nc, "extensions.load", {"extension_type": "taskserv", "name": "old"})
        jsonschema.validate(json.loads(reply.data), reply_schema)
        # Nothing failed loads into the cache.
        assert await c.list() == []


async def test_invalid_extensions(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "badtoml", "1.0.0", metadata="name = [unclosed\n")
    write_extension(
        root,
        "taskserv",
        "wrongname",
        "1.0.0",
        metadata=('name = "other"\nversion = "1.0.0"\ndescription = "x"\ntype = "taskserv"\n'),
    )
    write_extension(root, "taskserv", "noparse", "1.0.0", module="export def broken [ {\n")
    write_extension(root, "taskserv", "fine", "1.0.0")
    config = make_config(nats_server.url, tmp_path, roots=[root])
    async with running_service(config):
        c = LoaderClient(nc, timeout=WAIT)
        err = await expect_error(c.load("taskserv", "badtoml"), "invalid_extension")
        assert "not valid TOML" in err.details["problems"][0]
        assert err.details["path"] == str(root / "taskservs" / "badtoml" / "1.0.0")
        err = await expect_error(c.load("taskserv", "wrongname"), "invalid_extension")
        assert any("name" in p for p in err.details["problems"])
        err = await expect_error(c.load("taskserv", "noparse"), "invalid_extension")
        assert any("mod.nu" in p for p in err.details["problems"])
        # Broken metadata hides nothing else: discovery (which reads metadata, not modules) lists the
        # rest, and the good one loads.
        assert [a["name"] for a in await c.discover("taskserv")] == ["fine", "noparse"]
        assert (await c.load("taskserv", "fine"))["metadata"]["name"] == "fine"
        stats = await c.stats()
        assert stats["loads"]["failed"] == 3


async def test_timeout_kills_the_run(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.timeout_s": 0.001})
    async with running_service(config) as svc:
        c = LoaderClient(nc, timeout=WAIT)
        err = await expect_error(c.load("taskserv", "etcd"), "timeout")
        assert err.details == {"timeout_s": 0.001}
        assert svc.manager.runner.running == 0
        assert not list((config.cache_dir / "taskserv").glob("etcd/3.5.12"))


async def test_unwritable_cache_gives_load_failed(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path)
    async with running_service(config):
        # The cache folder for taskservs becomes a file: the loader cannot copy into it.
        (config.cache_dir / "taskserv").write_text("not a folder")
        c = LoaderClient(nc, timeout=WAIT)
        err = await expect_error(c.load("taskserv", "redis"), "load_failed")
        assert err.message
        assert (await c.load("provider", "local"))["metadata"]["name"] == "local"


async def test_overload_is_refused_at_once(nats_server: NatsServer, nc: Client, tmp_path: Path, gate: Gate) -> None:
    root = tmp_path / "ext"
    others = ["redis", "cilium", "coredns", "containerd"]
    for name in ["slow", *others]:
        write_extension(root, "taskserv", name, "1.0.0")
    overrides = {"nushell.max_concurrent": 1, "nushell.max_pending": 0, **gate.settings}
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides=overrides)
    async with running_service(config) as svc:
        c = LoaderClient(nc, timeout=WAIT)
        outcomes: dict[str, str] = {}

        async def one(name: str) -> None:
            try:
                await c.load("taskserv", name)
                outcomes[name] = "ok"
            except RemoteError as exc:
                outcomes[name] = exc.code
                assert "overloaded" in exc.details["reason"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "slow")
            with anyio.fail_after(WAIT):
                await svc.manager.wait_runs(1)
            await anyio.wait_all_tasks_blocked()
            assert svc.manager.runner.running == 1  # the one slot is taken, by a run held at the gate
            async with anyio.create_task_group() as refused:
                for name in others:
                    refused.start_soon(one, name)
            gate.release()  # every other load was answered while the slot was still taken
        assert outcomes == {"slow": "ok", **dict.fromkeys(others, "unavailable")}


async def test_missing_nushell_gives_unavailable(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    nu_copy = tmp_path / "nu"
    nu_copy.write_bytes(NU.read_bytes())
    nu_copy.chmod(0o755)
    config = make_config(nats_server.url, tmp_path, overrides={"nushell.path": str(nu_copy)})
    async with running_service(config):
        nu_copy.unlink()
        c = LoaderClient(nc, timeout=WAIT)
        err = await expect_error(c.load("taskserv", "etcd"), "unavailable")
        assert "Nushell cannot be started" in err.message


# --- the other subjects ---


async def test_reload_drops_and_loads_again(client: LoaderClient, events: EventLog) -> None:
    await client.load("taskserv", "kubernetes", "1.28.0")
    await client.load("taskserv", "kubernetes", "1.29.2")
    await events.wait_for(2, ".loaded")
    ext = await client.reload("taskserv", "kubernetes")
    assert ext["metadata"]["version"] == "1.29.2"
    unloaded = await events.wait_for(2, ".unloaded")
    assert sorted(e["version"] for e in unloaded) == ["1.28.0", "1.29.2"]
    assert {e["reason"] for e in unloaded} == {"reload"}
    loaded = await events.wait_for(3, ".loaded")
    assert loaded[-1]["reason"] == "reload" and loaded[-1]["extension"] == ext
    status = await client.status("taskserv", "kubernetes")
    assert status == {"loaded": True, "versions": ["1.29.2"]}


async def test_list_status_discover_clear(client: LoaderClient, events: EventLog) -> None:
    assert await client.list() == []
    assert await client.status("taskserv", "etcd") == {"loaded": False, "versions": []}
    await client.load("taskserv", "etcd")
    await client.load("provider", "aws", "1.5.0")
    listed = await client.list()
    assert [(e["metadata"]["extension_type"], e["metadata"]["name"]) for e in listed] == [
        ("provider", "aws"),
        ("taskserv", "etcd"),
    ]
    assert [e["metadata"]["name"] for e in await client.list("providers")] == ["aws"]
    assert await client.status("provider", "aws") == {"loaded": True, "versions": ["1.5.0"]}
    assert await client.status("provider", "aws", "2.0.0") == {"loaded": False, "versions": []}
    await expect_error(client.status("provider", "azure"), "not_found")

    everything = await client.discover()
    assert {(a["extension_type"], a["name"]) for a in everything} >= {
        ("provider", "aws"),
        ("provider", "upcloud"),
        ("provider", "local"),
        ("taskserv", "kubernetes"),
        ("cluster", "ci-cd"),
    }
    (k8s,) = await client.discover("taskserv", "kubernetes")
    assert k8s["versions"] == ["1.30.0-rc.1", "1.29.2", "1.28.0"]
    assert k8s["latest"]["version"] == "1.29.2"
    await expect_error(client.discover("taskserv", "kube"), "not_found")

    assert await client.clear() == {"cleared": 2}
    unloaded = await events.wait_for(2, ".unloaded")
    assert {e["reason"] for e in unloaded} == {"cleared"}
    assert await client.list() == []
    assert await client.clear() == {"cleared": 0}


async def test_eviction_publishes_unloaded(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    config = make_config(nats_server.url, tmp_path, overrides={"orchestrator.extensions.cache_size": 2})
    async with running_service(config):
        log = EventLog()
        await nc.subscribe("extensions.unloaded", cb=log.add)
        c = LoaderClient(nc, timeout=WAIT)
        await c.load("taskserv", "etcd")
        await c.load("taskserv", "redis")
        await c.load("taskserv", "etcd")  # etcd becomes the most recently used
        await c.load("taskserv", "cilium")
        (evicted,) = await log.wait_for(1)
        assert (evicted["name"], evicted["reason"]) == ("redis", "evicted")
        stats = await c.stats()
        assert stats["cache"]["size"] == 2 and stats["cache"]["evictions"] == 1


async def test_graph_formats(client: LoaderClient) -> None:
    graph = await client.graph("cluster", "buildkit")
    ids = [n["id"] for n in graph["nodes"]]
    assert graph["order"][-1] == "cluster:buildkit:1.0.0"
    assert {"from": "cluster:buildkit:1.0.0", "to": "taskserv:containerd:1.7.13"} in graph["edges"]
    assert set(graph["order"]) == set(ids)
    dot = await client.graph("cluster", "buildkit", format="dot")
    assert dot["text"].startswith("digraph") and '"cluster:buildkit:1.0.0" -> ' in dot["text"]
    mermaid = await client.graph("cluster", "buildkit", format="mermaid")
    assert mermaid["text"].startswith("graph LR") and "-->" in mermaid["text"]


async def test_stats_shape(client: LoaderClient, service: ExtensionService) -> None:
    stats = await client.stats()
    assert stats["instance_id"] == service.identity.id
    assert stats["nushell"]["version"] == "0.115.1"
    assert stats["cache"]["capacity"] == 100
    assert stats["in_flight"] == 0 and stats["uptime_s"] >= 0


async def test_msgpack_request_gets_msgpack_reply(nc: Client, service: ExtensionService) -> None:
    headers = {"Content-Type": "application/msgpack"}
    body = msgspec.msgpack.encode({"extension_type": "taskserv", "name": "redis"})
    reply = await nc.request("extensions.load", body, timeout=WAIT, headers=headers)
    assert reply.headers is not None
    assert reply.headers["Content-Type"] == "application/msgpack"
    decoded = msgspec.msgpack.decode(reply.data)
    assert decoded["success"] is True and decoded["data"]["metadata"]["name"] == "redis"
    bad = await nc.request("extensions.load", msgspec.msgpack.encode({"name": 1}), timeout=WAIT, headers=headers)
    assert msgspec.msgpack.decode(bad.data)["error"]["code"] == "invalid_request"


def generic_msgpack(data: bytes) -> list[Any]:
    """A MessagePack body as two independent decoders read it with no types to guide them (as a Rust client
    with rmp-serde reads it into a string field): msgspec's untyped decoder and the `msgpack` package."""
    return [msgspec.msgpack.decode(data), msgpack.unpackb(data)]


async def test_msgpack_replies_carry_timestamps_as_rfc3339_strings_as_json_does(
    nc: Client, service: ExtensionService, events: EventLog
) -> None:
    """MessagePack carries the same types as JSON: `loaded_at` is the RFC 3339 string JSON gives (UTC, "Z"),
    never MessagePack's timestamp extension, on a cold reply, on the cached short path (encoded once per
    entry), in a list and after a reload. Events are JSON whatever the request's encoding."""
    mp = {"Content-Type": "application/msgpack"}
    body = {"extension_type": "taskserv", "name": "redis"}
    cold = await raw_request(nc, "extensions.load", msgspec.msgpack.encode(body), headers=mp)
    cached = await raw_request(nc, "extensions.load", msgspec.msgpack.encode(body), headers=mp)
    listed = await raw_request(nc, "extensions.list", msgspec.msgpack.encode({}), headers=mp)
    as_json = json.loads((await raw_request(nc, "extensions.load", body)).data)
    stamp = as_json["data"]["loaded_at"]
    assert isinstance(stamp, str) and stamp.endswith("Z")
    for reply in (cold, cached, listed):
        assert reply.headers["Content-Type"] == "application/msgpack"
    for decoded in generic_msgpack(cold.data) + generic_msgpack(cached.data):
        assert isinstance(decoded["data"]["loaded_at"], str), type(decoded["data"]["loaded_at"])
        assert decoded == as_json
    for decoded in generic_msgpack(listed.data):
        assert [e["loaded_at"] for e in decoded["data"]] == [stamp]

    reloaded = await raw_request(nc, "extensions.reload", msgspec.msgpack.encode(body), headers=mp)
    for decoded in generic_msgpack(reloaded.data):
        again = decoded["data"]["loaded_at"]
        assert isinstance(again, str) and again.endswith("Z")
        assert datetime.fromisoformat(again) >= datetime.fromisoformat(stamp)

    # The loaded events of the cold load and the reload (both requested in MessagePack) and the unloaded event
    # of the reload go out as JSON, and say so, whatever the request's encoding.
    await events.wait_for(2, ".loaded")
    await events.wait_for(1, ".unloaded")
    for msg in events.messages:
        assert msg.headers is not None and msg.headers["Content-Type"] == "application/json"
        event = json.loads(msg.data)
        assert isinstance(event["timestamp"], str) and event["timestamp"].endswith("Z")
        if "extension" in event:
            assert isinstance(event["extension"]["loaded_at"], str)


async def test_events_carry_msg_id_and_trace_headers(client: LoaderClient, nc: Client, events: EventLog) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await raw_request(
        nc,
        "extensions.load",
        {"extension_type": "taskserv", "name": "coredns"},
        headers={"traceparent": parent},
    )
    (event,) = await events.wait_for(1, ".loaded")
    msg = events.messages[0]
    assert msg.headers is not None, "events carry headers"
    assert msg.headers["Nats-Msg-Id"] == event["event_id"]
    # Without a tracer provider the service passes the caller's trace context on unchanged.
    assert msg.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


# --- $SRV ---


@pytest.mark.parametrize("verb", ["PING", "INFO", "STATS"])
async def test_micro_replies_validate(nc: Client, service: ExtensionService, verb: str) -> None:
    schema = json.loads((MICRO_SCHEMAS / f"{verb.lower()}_response.json").read_text())
    for subject in (
        f"$SRV.{verb}",
        f"$SRV.{verb}.extension-loader",
        f"$SRV.{verb}.extension-loader.{service.identity.id}",
    ):
        reply = json.loads((await nc.request(subject, b"", timeout=WAIT)).data)
        jsonschema.validate(reply, schema, format_checker=jsonschema.FormatChecker())
        assert reply["name"] == "extension-loader" and reply["id"] == service.identity.id
    if verb == "INFO":
        subjects = {e["subject"] for e in reply["endpoints"]}
        assert {"extensions.load", "extensions.cache.clear", "extensions.graph"} <= subjects
