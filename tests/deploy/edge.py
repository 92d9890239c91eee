"""An edge deployment on one machine, for tests/deploy/test_edge.py: deploy/edge's hub and site run as their
comments say (from a folder holding nats.conf two levels above them, with the certificates their comment's command
makes there), only the ports moved to free ones; the site's leaf link runs through a TCP relay the test can cut
and mend, so the hub keeps running (and taking publishes) while the site cannot reach it.

Every server can be stopped and started again on the same ports and store. Each user logs in over TLS as
itself, with the inbox prefix nats.conf gives it; the hub's users and the site's have passwords of their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import nats
from nats.aio.client import Client

from service.app import certs
from service.app.cli import main
from service.app.natsserver import NatsServer, free_port
from service.app.publishing import prepare, publish
from service.contract.config import ENV_PREFIX, Config, inbox_prefix_for
from service.registry.buckets import RegistryBuckets
from service.registry.index import Release
from service.registry.names import DEFAULT_NAMES
from service.registry.signing import Signer
from service.wire.service import ExtensionService, flush_subscriptions
from tests.app.test_registry_cluster import published
from tests.conftest import WAIT, EventLog, make_config, registry_settings, running_service
from tests.deploy.test_cluster_accounts import shipped_loader_settings
from tests.deploy.test_compose import ADMIN_PASSWORD, PASSWORD_VARIABLES
from tests.deploy.test_tls import trusting

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "deploy" / "edge"
USERS = ("orchestrator", "loader", "observer", "publisher", "admin")
VARIABLES = dict(zip(USERS, (*PASSWORD_VARIABLES[:4], ADMIN_PASSWORD), strict=True))
HUB_PASSWORDS = {variable: f"k{i}hub" for i, variable in enumerate(VARIABLES.values())}
SITE_PASSWORDS = {variable: f"k{i}site" for i, variable in enumerate(VARIABLES.values())}
LEAF_PASSWORD = "k0leaf"
REG_API, EVENTS_API = "$JS.reg.API", "$JS.events.API"
INDEX, ARCHIVES = "KV_extension-index", "OBJ_extension-archives"
# The mirrors catch up with the server's own back-off after an outage: up to two minutes, and then a moment.
CATCH_UP = 150.0


class Relay:
    """A TCP relay on a free loopback port to `target`: each connection accepted is joined to a new one to the
    target, byte for byte, until `cut` closes the listener and every connection (a peer then finds nobody
    listening) and `mend` listens again on the same port."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def mend(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="relay-accept").start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            joined, self._sockets = self._sockets, []
        for sock in [*([listener] if listener is not None else []), *joined]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                far = socket.create_connection(("127.0.0.1", self.target), timeout=WAIT)
            except OSError:
                near.close()
                continue
            far.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    near.close()
                    far.close()
                    return
                self._sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True, name="relay-pump").start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Node:
    """One nats-server from a configuration file in the project folder, stopped and started again as it is."""

    def __init__(self, folder: Path, conf: str, env: Mapping[str, str]) -> None:
        self.folder = folder
        self.conf = conf
        self.env = dict(env)
        self.server: NatsServer | None = None
        self.port = int(_listen(folder / conf, "listen"))

    def start(self) -> NatsServer:
        self.server = NatsServer(["-c", self.conf], cwd=self.folder, env=self.env).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    @property
    def log(self) -> NatsServer:
        assert self.server is not None, "not started"
        return self.server


@dataclass
class Edge:
    folder: Path
    hub: Node
    site: Node
    relay: Relay
    leaf_port: int  # the hub's leaf-node listener, which the relay forwards to

    @property
    def ca(self) -> Path:
        return self.folder / "data" / "certs" / certs.CA_CERT

    async def link_up(self, times: int = 1) -> None:
        """Returns once the site has logged its leaf link made `times` times since it started."""
        await anyio.to_thread.run_sync(
            lambda: self.site.log.wait_for_log("Leafnode connection created for account: REG", times, WAIT)
        )


def documented_certs_command() -> list[str]:
    """The `extension-loader certs ...` command the comments atop both files give (the same in both)."""
    found = {
        tuple(m.split())
        for name in ("hub.conf", "site.conf")
        for m in re.findall(r"^#\s+\S*extension-loader (certs .+)$", (EDGE / name).read_text(), re.M)
    }
    assert len(found) == 1, f"the edge files give different certs commands, or none: {found}"
    return list(found.pop())


def _listen(conf: Path, key: str) -> str:
    match = re.search(rf"^{key}:\s*127\.0\.0\.1:(\d+)", conf.read_text(), re.M)
    assert match is not None, f"{conf} has no {key}"
    return match.group(1)


def lay_out(folder: Path) -> None:
    """nats.conf and deploy/edge's two files in `folder`, the ports moved to free ones, and the certificates."""
    argv = documented_certs_command()
    assert argv[0] == "certs" and not Path(argv[1]).is_absolute()
    assert main([argv[0], str(folder / argv[1]), *argv[2:]]) == 0
    shutil.copy(ROOT / "nats.conf", folder / "nats.conf")
    (folder / "deploy" / "edge").mkdir(parents=True)
    ports: dict[str, str] = {}
    for name in ("hub.conf", "site.conf"):
        text = (EDGE / name).read_text()
        moved = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.setdefault(m[1], str(free_port()))}", text)
        (folder / "deploy" / "edge" / name).write_text(moved)


@contextmanager
def edge_from_the_deploy_files(folder: Path) -> Iterator[Edge]:
    """The hub and the site started, the site's link made through the relay."""
    lay_out(folder)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", ENV_PREFIX))}
    hub = Node(folder, "deploy/edge/hub.conf", {**base, **HUB_PASSWORDS, "NATS_LEAF_PASSWORD": LEAF_PASSWORD})
    leaf = re.search(r"^leafnodes \{\s*listen: 127\.0\.0\.1:(\d+)", (folder / hub.conf).read_text(), re.M)
    assert leaf is not None, "hub.conf has no leaf-node listener"
    leaf_port = int(leaf.group(1))
    relay = Relay(leaf_port)
    url = f"nats-leaf://leaf_site:{LEAF_PASSWORD}@127.0.0.1:{relay.port}"
    site = Node(folder, "deploy/edge/site.conf", {**base, **SITE_PASSWORDS, "NATS_HUB_LEAF_URL": url})
    relay.mend()
    try:
        hub.start()
        site.start()
        yield Edge(folder, hub, site, relay, leaf_port)
    finally:
        relay.cut()
        site.stop()
        hub.stop()


def password(node: Node, user: str) -> str:
    return node.env[VARIABLES[user]]


@dataclass
class Login:
    user: str
    nc: Client
    refusals: list[str] = field(default_factory=list)  # permissions violations the server sent this connection


@asynccontextmanager
async def login(edge: Edge, node: Node, user: str, **options: object) -> AsyncIterator[Login]:
    """`user` on `node` over TLS trusting the deployment's CA, with the inbox prefix nats.conf gives it."""
    refusals: list[str] = []

    async def on_error(exc: Exception) -> None:
        if "violation" in str(exc).lower():
            refusals.append(str(exc))

    nc = await nats.connect(
        node.url,
        user=user,
        password=password(node, user),
        inbox_prefix=inbox_prefix_for(user),
        tls=trusting(edge.ca.parent),
        name=f"test-{user}",
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=5,
        error_cb=on_error,
        **options,
    )
    try:
        yield Login(user, nc, refusals)
    finally:
        await nc.close()


async def set_up(edge: Edge, node: Node, *more: str) -> tuple[int, list[str], str]:
    """`extension-loader setup` as that node's admin, as the files' comments run it: (exit code, lines, errors)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "NATS_"))}
    env |= {"NATS_PASSWORD": password(node, "admin"), f"{ENV_PREFIX}EVENTS__API_PREFIX": EVENTS_API}
    argv = [str(Path(sys.executable).with_name("extension-loader")), "setup", *more, "--server", node.url]
    argv += ["--tls-ca", str(edge.ca), "--user", "admin"]
    with anyio.fail_after(3 * WAIT):
        done = await anyio.run_process(argv, env=env, check=False)
    return done.returncode, done.stdout.decode().splitlines(), done.stderr.decode()


async def set_up_both(edge: Edge) -> None:
    """The hub's event log and buckets, then the site's event log and mirrors."""
    for node, more in ((edge.hub, ()), (edge.site, ("--site", "--hub-domain", "hub"))):
        code, _, errors = await set_up(edge, node, *more)
        assert code == 0, errors


async def publish_at_hub(publisher: Login, folder: Path, signer: Signer, config: Config) -> Release:
    """`extension-loader publish` as the hub's `publisher`, through PUB's imports."""
    buckets = RegistryBuckets(publisher.nc, timeout_s=WAIT, api_prefix=REG_API)
    await buckets.open()
    return (await publish(buckets, await prepare(folder, signer, config))).release


def publisher_config(edge: Edge, tmp_path: Path) -> Config:
    return make_config(edge.hub.url, tmp_path / "publisher", overrides={"registry.api_prefix": REG_API})


def site_loader_config(edge: Edge, tmp_path: Path, name: str, signer: Signer) -> Config:
    """deploy/loader.toml's settings at the site, trusting `signer`, with auto_update; no extension tree."""
    empty = tmp_path / name / "no-tree"
    empty.mkdir(parents=True, exist_ok=True)  # there already when the same loader is started again
    return make_config(
        edge.site.url,
        tmp_path / name,
        roots=[empty],
        overrides={
            **shipped_loader_settings(),
            "nats.password": password(edge.site, "loader"),
            "nats.tls_ca": str(edge.ca),
            **registry_settings(signer.public_key, auto_update=True),
        },
    )


async def listen(listener: Login) -> EventLog:
    """The live events as `listener` hears them."""
    events = EventLog()
    for subject in ("extensions.loaded", "extensions.unloaded"):
        await listener.nc.subscribe(subject, cb=events.add)
    await flush_subscriptions(listener.nc)
    return events


async def announced(events: EventLog, version: str, within: float = CATCH_UP) -> float:
    """Waits until `version` was announced as published; returns how long that took."""
    start = time.monotonic()
    await events.wait_until(lambda: version in [v for _, v in published(events)], within)
    return time.monotonic() - start


async def hub_index_sequence(admin: Login) -> int:
    """The last sequence of the hub's index stream, as the hub's admin reads it."""
    return (await admin.nc.jetstream(timeout=WAIT).stream_info(INDEX)).state.last_seq


async def mirrored(service: ExtensionService, versions: int) -> None:
    """Returns once the loader's view of the index holds that many versions (each update applied is an event)."""
    follower = service.follower
    assert follower is not None and service.manager.releases is not None
    releases = service.manager.releases
    with anyio.fail_after(CATCH_UP):
        while releases.counts()[1] < versions:
            await follower.wait_updates(follower.updates + 1)


async def archives_mirrored(service: ExtensionService, hub_admin: Client) -> None:
    """Returns once the site's archive mirror holds every message the hub's archive bucket holds now: the two
    mirrors catch up each on its own, so the index's may list a release before its archive is at the site."""
    hub_last = (await hub_admin.jetstream().stream_info(ARCHIVES)).state.last_seq
    assert service.follower is not None
    with anyio.fail_after(CATCH_UP):
        await service.follower.wait_mirrors(lambda m: m.archives_last_sequence >= hub_last)


async def archive_at_site(admin: Login, release: Release) -> None:
    """Returns once the site's archive mirror holds `release`'s archive: its metadata, which the publisher writes
    after the chunks and the mirror copies in the same order (a push consumer of the site's admin)."""
    js = admin.nc.jetstream(timeout=WAIT)
    subject = DEFAULT_NAMES.meta_subject(release.object)
    sub = await js.subscribe(subject, stream=ARCHIVES, ordered_consumer=True)
    try:
        await sub.next_msg(timeout=CATCH_UP)
    finally:
        await sub.unsubscribe()


@asynccontextmanager
async def site_loader(edge: Edge, tmp_path: Path, name: str, signer: Signer) -> AsyncIterator[ExtensionService]:
    """A loader at the site (`site_loader_config`), entered once its mirrors hear from the hub."""
    async with running_service(site_loader_config(edge, tmp_path, name, signer)) as service:
        assert service.follower is not None
        with anyio.fail_after(WAIT):
            await service.follower.wait_mirrors(lambda m: m.hub_reachable)
        yield service
