"""Concurrency and scale-out: no head-of-line blocking, graceful stop, reconnects, peers, a NATS cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import nats
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from nats.aio.client import Client

from service.app import certs
from service.app.client import LoaderClient
from service.app.natsserver import NatsServer, free_port, nats_server_binary
from service.app.serve import build_manager, run, service_version
from service.contract.messages import Available, ExtensionType
from service.core.slices import Steps
from service.core.store import ExtensionStore
from service.core.versions import Constraint
from service.wire.service import ExtensionService, flush_subscriptions
from tests.conftest import (
    ROOT,
    WAIT,
    EventLog,
    Gate,
    make_config,
    running_service,
    service_process,
    write_extension,
)

pytestmark = pytest.mark.anyio


async def test_cached_answers_are_not_held_up_by_a_cold_load(
    nats_server: NatsServer, nc: Client, tmp_path: Path, gate: Gate
) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0")
    write_extension(root, "taskserv", "quick", "1.0.0")
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides={**gate.settings})
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        await client.load("taskserv", "quick", "1.0.0")  # now cached
        finished: list[str] = []

        async def cold() -> None:
            await client.load("taskserv", "slow", "1.0.0")
            finished.append("cold")

        async def cached() -> None:
            await client.load("taskserv", "quick", "1.0.0")
            finished.append("cached")

        async with anyio.create_task_group() as tg:
            tg.start_soon(cold)
            with anyio.fail_after(WAIT):
                await service.manager.wait_runs(2)  # the cold load runs (quick's was the first run), held at the gate
            async with anyio.create_task_group() as answers:
                for _ in range(20):
                    answers.start_soon(cached)
            assert finished == ["cached"] * 20  # all answered while the cold load is still held
            gate.release()
        assert finished == ["cached"] * 20 + ["cold"]


class LogLines(list[str]):
    """A service's log lines as they come, with an event set when one contains `wanted`."""

    def __init__(self, wanted: str) -> None:
        super().__init__()
        self.wanted = wanted
        self.seen = threading.Event()

    def append(self, line: str) -> None:
        super().append(line)
        if self.wanted in line:
            self.seen.set()


STOPPING = "SIGTERM received: stopping"


class HeldStore(ExtensionStore):
    """The real store, whose listing (a discover) goes on yielding, slice after slice, until the test lets it go."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(roots)
        self.entered = anyio.Event()
        self.release = anyio.Event()

    def listing(self, extension_type: ExtensionType | None = None) -> Steps[tuple[Available, ...]]:
        self.entered.set()
        give_up = time.monotonic() + WAIT
        while not self.release.is_set():
            assert time.monotonic() < give_up, "the test never let the discover go"
            yield
        return (yield from super().listing(extension_type))


async def test_cached_answers_are_not_held_up_by_a_discover(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    root = tmp_path / "ext"
    for i in range(3):
        write_extension(root, "taskserv", f"ext-{i}", "1.0.0")
    config = make_config(nats_server.url, tmp_path, roots=[root])
    manager = build_manager(config)
    store = manager.store = HeldStore([root])
    async with ExtensionService(config, manager, version=service_version()):
        client = LoaderClient(nc, timeout=WAIT)
        await client.load("taskserv", "ext-1", "1.0.0")  # now cached
        finished: list[str] = []

        async def discover() -> None:
            assert [a["name"] for a in await client.discover()] == ["ext-0", "ext-1", "ext-2"]
            finished.append("discover")

        async with anyio.create_task_group() as tg:
            tg.start_soon(discover)
            with anyio.fail_after(WAIT):
                await store.entered.wait()  # the discover is in the store, between two slices
            assert (await client.load("taskserv", "ext-1", "1.0.0"))["metadata"]["name"] == "ext-1"
            assert (await client.load("taskserv", "ext-1"))["metadata"]["version"] == "1.0.0"
            finished.append("cached")
            store.release.set()
        assert finished == ["cached", "discover"]


@pytest.fixture
def served_lines() -> LogLines:
    return LogLines(STOPPING)


@pytest.fixture
def served_process(
    nats_server: NatsServer, tmp_path: Path, gate: Gate, served_lines: LogLines
) -> Iterator[subprocess.Popen[bytes]]:
    """The service as a separate process (`extension-loader serve`), ready once it logs that it serves; its
    loads of `slow` wait at the gate."""
    root = tmp_path / "ext"
    for name in ("slow", "alpha", "beta", "gamma", "delta"):
        write_extension(root, "taskserv", name, "1.0.0")
    overrides = {**gate.settings}
    with service_process(nats_server.url, tmp_path, roots=[root], overrides=overrides, lines=served_lines) as proc:
        yield proc


async def test_sigterm_answers_every_request_already_received(
    served_process: subprocess.Popen[bytes], served_lines: LogLines, gate: Gate, nc: Client, events: EventLog
) -> None:
    client = LoaderClient(nc, timeout=WAIT)
    replies: list[Any] = []

    async def load(name: str) -> None:
        replies.append(await client.load("taskserv", name))

    async with anyio.create_task_group() as tg:
        for name in ("slow", "alpha", "beta", "gamma", "delta"):
            tg.start_soon(load, name)
        await anyio.wait_all_tasks_blocked()  # every request is written ...
        await flush_subscriptions(nc)  # ... and routed to the service by the server
        served_process.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(served_lines.seen.wait, WAIT), "".join(served_lines)
        gate.release()  # the stop has begun with the load of `slow` still held
    assert sorted(r["metadata"]["name"] for r in replies) == ["alpha", "beta", "delta", "gamma", "slow"]
    loaded = await events.wait_for(5, ".loaded")
    assert len(loaded) == 5
    code = await anyio.to_thread.run_sync(served_process.wait, WAIT)
    assert code == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_waiting_for_nats_ends_the_service_at_once(tmp_path: Path, signum: signal.Signals) -> None:
    """A service started before its NATS server waits for it; SIGTERM or Ctrl-C then stops it (exit 0), as they
    do once it serves, instead of being ignored until a server appears."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free, and nothing will listen on it
    lines: list[str] = []
    url = f"nats://127.0.0.1:{port}"
    with service_process(url, tmp_path, ready_when="Connect call failed", lines=lines) as proc:
        proc.send_signal(signum)
        code = await anyio.to_thread.run_sync(proc.wait, WAIT)
    assert code == 0, "".join(lines)
    assert any(f"{signum.name} received: stopping" in line for line in lines), "".join(lines)
    assert not any("Traceback" in line for line in lines), "".join(lines)


HELD_START = """
import sys

import anyio.to_thread

import service.wire.service
from service.app import cli

flush = service.wire.service.flush_subscriptions


async def held(nc):
    # Fault injection: the start is held between subscribing and returning, until the test says go on stdin.
    await flush(nc)
    print("SUBSCRIBED", file=sys.stderr, flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


service.wire.service.flush_subscriptions = held
sys.exit(cli.main(sys.argv[1:]))
"""


async def test_a_stop_at_the_end_of_the_start_still_answers_what_was_received(
    nats_server: NatsServer, nc: Client, tmp_path: Path, gate: Gate
) -> None:
    """SIGTERM after the service subscribed but before its start returned: a request received meanwhile is
    answered (drained), not cancelled as a stop during the connect is."""
    script = tmp_path / "held_start.py"
    script.write_text(HELD_START)
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0")  # its load is held at the gate until after the stop
    argv = [
        *(sys.executable, str(script), "serve", "--nats-url", nats_server.url),
        *(
            "--set",
            f'orchestrator.paths.data_dir="{tmp_path / "data"}"',
            "--set",
            f'nushell.path="{gate.nu}"',
            "--set",
            "nushell.spares=0",
        ),
        *("--set", f'orchestrator.extensions.paths=["{root}"]', "--set", "orchestrator.extensions.auto_load=false"),
    ]
    async with await anyio.open_process(argv, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        stderr = BufferedByteReceiveStream(proc.stderr)
        said: list[bytes] = []
        with anyio.fail_after(WAIT):
            while not said or b"SUBSCRIBED" not in said[-1]:
                said.append(await stderr.receive_until(b"\n", 1 << 20))
        client = LoaderClient(nc, timeout=WAIT)
        replies: list[Any] = []

        async def load() -> None:
            replies.append(await client.load("taskserv", "slow", "1.0.0"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            await anyio.wait_all_tasks_blocked()  # the request is written ...
            await flush_subscriptions(nc)  # ... and routed to the service by the server
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(WAIT):
                while STOPPING.encode() not in said[-1]:  # the signal is handled while the start is held
                    said.append(await stderr.receive_until(b"\n", 1 << 20))
            await proc.stdin.send(b"go on\n")
            gate.release()
        assert [r["metadata"]["name"] for r in replies] == ["slow"]
        with anyio.fail_after(WAIT):
            assert await proc.wait() == 0


async def test_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    first = NatsServer(["-a", "127.0.0.1", "-p", "-1"]).start()
    second = NatsServer(["-a", "127.0.0.1", "-p", str(first.port)])
    try:
        async with running_service(make_config(first.url, tmp_path)) as service:
            await anyio.to_thread.run_sync(first.stop)
            second.start()  # the same port: a restart, as an operator would do it
            with anyio.fail_after(WAIT):
                await service.wait_until(reconnects=1)
            conn = await nats.connect(second.url, max_reconnect_attempts=1, allow_reconnect=False)
            try:
                client = LoaderClient(conn, timeout=WAIT)
                assert (await client.load("taskserv", "etcd"))["metadata"]["name"] == "etcd"
                assert (await client.stats())["events"] == {"published": 1, "failed": 0}
            finally:
                await conn.close()
    finally:
        first.stop()
        second.stop()


async def test_peers_forget_what_another_instance_reloaded(nats_server: NatsServer, nc: Client, tmp_path: Path) -> None:
    root = tmp_path / "ext"
    folder = write_extension(root, "taskserv", "app", "1.0.0")
    async with (
        running_service(make_config(nats_server.url, tmp_path / "a", roots=[root]), instance_id="A") as a,
        running_service(make_config(nats_server.url, tmp_path / "b", roots=[root]), instance_id="B") as b,
    ):
        client = LoaderClient(nc, timeout=WAIT)

        def digests() -> dict[str, list[str]]:
            return {s.identity.id: [e.digest for e in s.manager.loaded()] for s in (a, b)}

        async def fill_both() -> None:
            # The queue group gives a request to one instance or the other; what each holds is set here through
            # its own manager, so every answer below is known whichever instance gives it.
            for s in (a, b):
                await s.manager.load(ExtensionType.TASKSERV, "app", "1.0.0")

        async def settled() -> None:
            with anyio.fail_after(WAIT):  # each instance has heard every event the other one published
                await a.wait_until(peer_events=b.publisher.published)
                await b.wait_until(peer_events=a.publisher.published)

        await fill_both()
        (first,) = digests()["A"]
        assert digests() == {"A": [first], "B": [first]}

        (folder / "mod.nu").write_text("export def check [] { {ok: true, changed: true} }\n")
        reloaded = await client.reload("taskserv", "app")
        assert reloaded["digest"] != first
        await settled()
        # The instance that reloaded holds the new copy; the other one forgot its old copy.
        assert sorted(digests().values()) == [[], [reloaded["digest"]]]
        for _ in range(20):
            assert (await client.load("taskserv", "app", "1.0.0"))["digest"] == reloaded["digest"]

        await settled()
        await fill_both()
        assert digests() == {"A": [reloaded["digest"]], "B": [reloaded["digest"]]}
        assert await client.clear() == {"cleared": 1}
        await settled()
        assert digests() == {"A": [], "B": []}  # the other instance dropped its copy on the clear's event
        assert await client.clear() == {"cleared": 0}


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three clustered nats-servers on loopback; ready once each has routes to the two others."""
    cluster_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    servers = [
        NatsServer(
            [
                "-a",
                "127.0.0.1",
                "-p",
                "-1",
                "-n",
                f"node-{i}",
                "--cluster_name",
                "loader-test",
                "--cluster",
                f"nats://127.0.0.1:{port}",
                "--routes",
                routes,
            ]
        )
        for i, port in enumerate(cluster_ports)
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_for_log("Route connection created", count=2, timeout=WAIT)
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_keeps_answering_when_its_cluster_node_stops(nats_cluster: list[NatsServer], tmp_path: Path) -> None:
    urls = ",".join(s.url for s in nats_cluster)
    config = make_config(urls, tmp_path)
    async with running_service(config) as service:
        assert service.nc.connected_url is not None
        here = next(s for s in nats_cluster if s.port == service.nc.connected_url.port)
        await anyio.to_thread.run_sync(here.stop)
        with anyio.fail_after(WAIT):
            await service.wait_until(reconnects=1)
        assert service.nc.connected_url is not None
        now = next(s for s in nats_cluster if s.port == service.nc.connected_url.port)
        assert now is not here
        conn = await nats.connect(now.url, max_reconnect_attempts=1, allow_reconnect=False)
        try:
            ext = await LoaderClient(conn, timeout=WAIT).load("cluster", "buildkit")
            assert ext["metadata"]["name"] == "buildkit"
        finally:
            await conn.close()


def test_repeated_discovery_reads_no_metadata_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    for i in range(50):
        for minor in range(3):
            write_extension(root, "taskserv", f"ext-{i:03d}", f"1.{minor}.0")
    store = ExtensionStore([root])
    reads: list[Path] = []
    original = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    assert len(store.available(ExtensionType.TASKSERV)) == 50
    assert len(reads) == 150
    store.available(ExtensionType.TASKSERV)
    store.resolve(ExtensionType.TASKSERV, "ext-007", Constraint.parse(None))
    assert len(reads) == 150  # nothing changed: nothing read again
    write_extension(root, "taskserv", "ext-007", "1.3.0")
    store.available(ExtensionType.TASKSERV)
    assert len(reads) == 154  # only the extension that changed is read again


@pytest.mark.parametrize("node", [1, 2, 3])
def test_the_documented_cluster_configuration_is_valid(node: int, tmp_path: Path) -> None:
    """deploy/cluster/node-N.conf: accepted by nats-server, each on its own ports, all routing to one another."""
    root = Path(__file__).resolve().parents[2]
    conf = root / "deploy" / "cluster" / f"node-{node}.conf"
    users = ("ORCHESTRATOR", "LOADER", "OBSERVER", "PUBLISHER", "ADMIN")  # nats.conf's, whose passwords it reads
    env = {**os.environ, **{f"NATS_{u}_PASSWORD": f"k{u.lower()}" for u in users}}
    # Its TLS files are relative to the folder it starts in (tests/deploy/test_tls.py runs the cluster itself).
    certs.ensure(tmp_path / "data" / "certs")
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout
    text = conf.read_text()
    assert f"listen: 127.0.0.1:{4221 + node}" in text and f"listen: 127.0.0.1:{6221 + node}" in text
    assert all(f"nats-route://127.0.0.1:{port}" in text for port in (6222, 6223, 6224))


async def stats_when(client: LoaderClient, holds: Callable[[Any], bool]) -> None:
    """Asks `extensions.stats` again until it shows what `holds` looks for (each look a round trip, no sleep)."""
    with anyio.fail_after(WAIT):
        while not holds(await client.stats()):
            pass


async def test_a_load_during_a_reload_joins_it(nats_server: NatsServer, nc: Client, tmp_path: Path, gate: Gate) -> None:
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0")
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides={**gate.settings})
    async with running_service(config) as service:
        client = LoaderClient(nc, timeout=WAIT)
        replies: list[Any] = []

        async def reload() -> None:
            replies.append(await client.reload("taskserv", "slow"))

        async def load() -> None:
            replies.append(await client.load("taskserv", "slow", "1.0.0"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reload)
            with anyio.fail_after(WAIT):
                await service.manager.wait_runs(1)  # the reload runs, held at the gate ...
            tg.start_soon(load)
            await stats_when(client, lambda s: s["loads"]["coalesced"] == 1)  # ... and the load waits for it
            gate.release()
        assert replies[0] == replies[1]
        stats = await client.stats()
        assert stats["loads"]["cold"] == 1 and stats["loads"]["coalesced"] == 1


async def test_stopping_answers_a_request_waiting_on_auto_load(
    nats_server: NatsServer, nc: Client, tmp_path: Path, gate: Gate
) -> None:
    """Stop while auto_load runs a load that a request is waiting on: the request is answered, then the
    service stops (auto_load is stopped only after the drain)."""
    root = tmp_path / "ext"
    write_extension(root, "taskserv", "slow", "1.0.0")
    overrides = {"orchestrator.extensions.auto_load": True, **gate.settings}
    config = make_config(nats_server.url, tmp_path, roots=[root], overrides=overrides)
    stop = anyio.Event()
    replies: list[Any] = []
    client = LoaderClient(nc, timeout=WAIT)

    async def load() -> None:
        replies.append(await client.load("taskserv", "slow", "1.0.0"))

    async with running_service(config) as service, anyio.create_task_group() as tg:
        tg.start_soon(run, service, stop)
        with anyio.fail_after(WAIT):
            await service.manager.wait_runs(1)  # auto_load's run of `slow` has begun, held at the gate
        tg.start_soon(load)
        await stats_when(client, lambda s: s["loads"]["coalesced"] == 1)  # the request waits on that run
        stop.set()
        await anyio.wait_all_tasks_blocked()  # the stop has begun, with the run still held
        gate.release()
    assert replies and replies[0]["metadata"]["name"] == "slow"
    assert service.manager.counters.coalesced == 1
